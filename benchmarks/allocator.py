"""Training steps with glibc's default allocator settings against `keep_freed_memory()`.

The quick preset's trainer (MiniLM, bf16 autocast where `auto` picks it), the same batches
in every block, blocks alternating between glibc's defaults (large blocks mapped afresh
and unmapped when freed) and memory kept for reuse (minbert.devices.keep_freed_memory,
which training and scoring call on a CPU). Prints ms a step and page faults a step for
each, and the ratio, in one process. Linux with glibc only.

    python benchmarks/allocator.py [--config configs/quick.toml] [--steps 15] [--blocks 10]
"""
import argparse
import ctypes
import platform
import resource
import tempfile
import time
import warnings

from minbert.build import build_plan, encode_train
from minbert.config import load_config
from minbert.devices import keep_freed_memory, machine_summary
from minbert.loading import build_model
from minbert.training import Trainer

# glibc's defaults (mallopt(3)): at most 65,536 mmapped blocks, trim above 128 KiB free
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def glibc_defaults(libc):
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quick.toml")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        raise SystemExit("Linux with glibc only")
    warnings.simplefilter("ignore")
    libc = ctypes.CDLL("libc.so.6")
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [f'run_dir="{run_dir}/run"'])
        plan = build_plan(config)
        model, tokenizer = build_model(config, plan.tasks)
        train_sets, validation_sets, counts = encode_train(config, plan.tasks, tokenizer)
        trainer = Trainer(plan, model, train_sets, {}, counts, validation_sets)
        print(f"machine: {machine_summary()}")
        print(f"{args.config}: {trainer.precision}; steps 5-{4 + args.steps} of epoch 1 in "
              f"every block, {args.blocks} blocks alternating\n")
        steps = trainer._plan(0)
        block = steps[5:5 + args.steps]
        window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
        trainer.model.train()
        for step in steps[:5]:  # warm-up
            trainer.train_step(step, window)
            trainer.update()
        results = {"glibc defaults": [], "freed memory kept": []}
        for b in range(args.blocks):
            mode = list(results)[b % 2]
            if b % 2:
                assert keep_freed_memory()
            else:
                glibc_defaults(libc)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            for step in block:
                trainer.train_step(step, window)
                trainer.update()
            seconds = (time.perf_counter() - start) / len(block)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(block)
            results[mode].append((seconds, faults))
            print(f"block {b + 1:>2} {mode:<18} {seconds * 1000:7.1f} ms/step "
                  f"{faults:9.0f} faults/step", flush=True)
    print()
    means = {}
    for mode, rows in results.items():
        means[mode] = sum(s for s, _ in rows) / len(rows)
        print(f"{mode:<18} {means[mode] * 1000:7.1f} ms/step (mean of {len(rows)} blocks), "
              f"{sum(f for _, f in rows) / len(rows):9.0f} faults/step")
    pairs = list(zip(results["glibc defaults"], results["freed memory kept"]))
    faster = sum(kept < default for (default, _), (kept, _) in pairs)
    print(f"kept / defaults: {means['freed memory kept'] / means['glibc defaults']:.3f} of the "
          f"time a step; faster in {faster} of {len(pairs)} block pairs")


if __name__ == "__main__":
    main()
