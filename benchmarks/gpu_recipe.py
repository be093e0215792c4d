"""The paper-scale recipe on a GPU, short: examples/s of the best recipe (cross-encoding +
PCGrad + SMART 2, bf16) against plain cross-encoding in the same process, then the dev
metrics the recipe reached. Meant to finish in under 8 minutes on one GPU.

    python benchmarks/gpu_recipe.py                                  # bert-base-uncased (hub)
    python benchmarks/gpu_recipe.py --checkpoint /path/to/bert-base  # a local HF folder
    python benchmarks/gpu_recipe.py --checkpoint minilm-l6 --device cpu --steps 10  # smoke

Prints one line per phase and a summary; exits 2 with a message when the device is absent.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.training import train


def phase(config_file, checkpoint, device, steps, dev_limit, overrides=()):
    run_dir = tempfile.mkdtemp(prefix="minbert-gpu-bench-")
    config = load_config(config_file, [f'run_dir="{run_dir}"', f'model.checkpoint="{checkpoint}"',
                                       f'train.device="{device}"', f"train.max_steps={steps}",
                                       f"data.dev_limit={dev_limit}",
                                       f"train.log_every={max(1, min(10, steps // 4))}",
                                       "train.checkpoint_every=1000000", *overrides])
    start = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - start
    records = [json.loads(x) for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if r["type"] == "step"]
    rates = rates[1:] or rates  # the first window holds the warm-up
    if not rates:
        raise SystemExit(f"gpu_recipe: {run_dir}/log.jsonl has no step records")
    return config, run_dir, sum(rates) / len(rates), seconds


def dev_metrics(config, run_dir, device):
    from minbert.evaluation import evaluate
    from minbert.build import encode_split
    from minbert.loading import build_model
    from minbert.runs import load_state
    from minbert.tasks import build_tasks
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    model.load_state_dict(load_state(Path(run_dir) / "checkpoint.pt")["model"])
    model.to(device)
    dev = encode_split(config, tasks, tokenizer, "dev")
    return evaluate(model, tasks, dev, config.data.eval_batch_size, device,
                    torch.bfloat16 if config.train.precision == "bf16" else None)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="bert-base-uncased")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=400, help="training steps per phase")
    parser.add_argument("--dev-limit", type=int, default=0, help="dev examples per task (0: all)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_recipe: no CUDA device here; run it where a GPU is (or --device cpu)",
              file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    precision = [f'train.precision="{"bf16" if cuda else "fp32"}"']  # bf16 autocast on GPU
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device {name}, checkpoint {args.checkpoint}, {args.steps} steps per phase")
    _, _, plain, plain_s = phase("configs/cross-encoding.toml", args.checkpoint, args.device,
                                 args.steps, args.dev_limit, precision)
    print(f"plain cross-encoding: {plain:,.1f} examples/s ({plain_s:.0f} s)")
    config, run_dir, recipe, recipe_s = phase("configs/bert-base-gpu.toml", args.checkpoint,
                                              args.device, args.steps, args.dev_limit,
                                              precision)
    print(f"recipe (cross + PCGrad + SMART 2): {recipe:,.1f} examples/s ({recipe_s:.0f} s)")
    metrics = dev_metrics(config, run_dir, args.device)
    print(f"recipe / plain throughput: {recipe / plain:.2f}x")
    print("dev after {} steps: ".format(args.steps)
          + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
