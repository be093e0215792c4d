"""Prediction speed of the two backends on the same inputs: PyTorch (fp32, and bf16 where
precision auto picks it) against onnxruntime (fp32), through `minbert.load(...).predict`.

The model is MiniLM with freshly initialised heads (speed does not depend on training),
exported with `export_run` + `export_onnx` into a temporary folder; the inputs are the
first N SST dev sentences and N Quora dev pairs (cross-encoded). Prints examples/s and
ratios, and the largest difference of the ONNX outputs from PyTorch fp32.

    python benchmarks/onnx_speed.py [--n 1000]
"""
import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import minbert
from minbert.config import load_config
from minbert.devices import machine_summary
from minbert.export import export_run
from minbert.loading import build_model
from minbert.onnx_backend import export_onnx
from minbert.tasks import build_tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="inputs per task")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    out = Path(tempfile.mkdtemp())
    config = load_config("configs/cross-encoding.toml", [f'run_dir="{out / "run"}"'])
    tasks = build_tasks(config)
    model, _ = build_model(config, tasks)
    export_run(model.eval(), config, out / "export")
    export_onnx(model, {n: tasks[n] for n in ("sst", "quora")}, out / "export")
    inputs = {}
    for name in ("sst", "quora"):
        examples = tasks[name].read(Path(config.data.dir) / tasks[name].dev_file)
        texts = examples.texts
        inputs[name] = (texts[0] if len(texts) == 1 else list(zip(*texts)))[:args.n]
    backends = {"torch fp32": dict(precision="fp32"), "torch auto": dict(precision="auto"),
                "onnxruntime fp32": dict(backend="onnx")}
    print(f"machine: {machine_summary()}; {args.n} inputs per task, batches of 64\n")
    print(f"{'backend':<20}{'task':<8}{'seconds':>9}{'ex/s':>8}{'vs torch fp32':>15}"
          f"{'max |Δ| vs fp32':>17}")
    reference, baseline = {}, {}
    for label, options in backends.items():
        predictor = minbert.load(out / "export", **options)
        for name, texts in inputs.items():
            predictor.predict(name, texts[:64])  # warm-up
            start = time.perf_counter()
            prediction = predictor.predict(name, texts)
            seconds = time.perf_counter() - start
            reference.setdefault(name, prediction.probabilities)
            baseline.setdefault(name, seconds)
            delta = np.abs(prediction.probabilities - reference[name]).max()
            print(f"{label:<20}{name:<8}{seconds:>9.2f}{len(texts) / seconds:>8.1f}"
                  f"{baseline[name] / seconds:>14.2f}x{delta:>17.2e}")


if __name__ == "__main__":
    main()
