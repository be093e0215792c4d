"""Dev evaluation speed: today's path (fp32, no_grad, batches of 128) against inference
mode, bf16 autocast and other batch sizes, on the same model and the same dev examples.

Prints seconds and examples/s per variant, the ratio to the fp32 path at batch 128 (the
evaluation every epoch ran before precision "auto"), and how far each variant's metrics
are from that path's (fp32 variants must be equal).

    python benchmarks/eval_speed.py [--limit 2000] [--config configs/cross-encoding.toml]
"""
import argparse
import tempfile
import time
import warnings

import torch

from minbert.build import encode_split
from minbert.config import load_config
from minbert.devices import machine_summary
from minbert.evaluation import evaluate
from minbert.loading import build_model
from minbert.tasks import build_tasks


def timed(model, tasks, dev, batch_size, dtype, grad_mode):
    start = time.perf_counter()
    with grad_mode():
        metrics, _ = evaluate(model, tasks, dev, batch_size, torch.device("cpu"), dtype)
    return time.perf_counter() - start, metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="dev examples per task (0: all)")
    parser.add_argument("--config", default="configs/cross-encoding.toml")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(args.config, [f'run_dir="{tempfile.mkdtemp()}"',
                                       f"data.dev_limit={args.limit}"])
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    model.eval()
    dev = encode_split(config, tasks, tokenizer, "dev")
    total = sum(len(d) for d in dev.values())
    print(f"machine: {machine_summary()}; {total} dev examples "
          f"({', '.join(f'{n} {len(d)}' for n, d in dev.items())})\n")
    timed(model, tasks, {n: d for n, d in list(dev.items())[:1]}, 32, torch.bfloat16,
          torch.no_grad)  # warm-up: first calls allocate and pick kernels
    # outputs() itself runs under inference_mode; the "no_grad" row is what it ran before:
    # an enclosing no_grad does not change an inner inference_mode, so that path is timed
    # by swapping the decorator
    import minbert.evaluation as evaluation
    inner = evaluation.outputs.__wrapped__
    variants = [("fp32 no_grad (before)", 128, None, "no_grad")]
    variants += [("fp32 inference_mode", b, None, "inference") for b in (64, 128, 256)]
    variants += [("bf16 inference_mode", b, torch.bfloat16, "inference")
                 for b in (16, 32, 64, 128, 256)]
    baseline = None
    print(f"{'variant':<24}{'batch':>6}{'seconds':>9}{'ex/s':>8}{'ratio':>8}"
          f"{'max |Δ metric|':>16}")
    for name, batch_size, dtype, mode in variants:
        if mode == "no_grad":
            evaluation.outputs = torch.no_grad()(inner)
        seconds, metrics = timed(model, tasks, dev, batch_size, dtype, torch.no_grad)
        evaluation.outputs = torch.inference_mode()(inner)
        if baseline is None:
            baseline = seconds, metrics
        delta = max(abs(metrics[k] - baseline[1][k]) for k in metrics)
        print(f"{name:<24}{batch_size:>6}{seconds:>9.1f}{total / seconds:>8.1f}"
              f"{baseline[0] / seconds:>7.2f}x{delta:>16.4f}")


if __name__ == "__main__":
    main()
