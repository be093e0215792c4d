"""Training steps with glibc's default allocator settings against memory kept for reuse.

The quick preset's trainer (MiniLM, bf16 autocast where `auto` picks it), the same batches
in every block (or, with --varied, each pair of blocks the epoch's next batches, as a run
meets them), blocks in pairs whose order alternates (AB, BA, ...) between glibc's defaults
(large blocks mapped afresh and unmapped when freed) and memory kept for reuse (mallopt:
no mmap for large blocks, no trimming; what jemalloc or tcmalloc would give). minbert does
not set this (measured here: far fewer page faults, a step time not distinguishable, and
glibc falls back to mmap when the heap cannot grow, so the effect is not assured). Prints
ms a step and page faults a step for each, the ratio, and the paired 95% interval of the
time saved, in one process. Linux with glibc only.

    python benchmarks/allocator.py [--config configs/quick.toml] [--steps 15] [--blocks 10]
        [--varied]
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
from minbert.devices import machine_summary
from minbert.loading import build_model
from minbert.stats import mean_interval
from minbert.training import Trainer

# glibc's defaults (mallopt(3)): at most 65,536 mmapped blocks, trim above 128 KiB free
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory(libc):
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def glibc_defaults(libc):
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quick.toml")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--varied", action="store_true",
                        help="each pair of blocks the epoch's next steps, not the same ones")
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
        which = ("the epoch's next steps in each block" if args.varied else
                 f"steps 5-{4 + args.steps} of epoch 1 in every block")
        print(f"{args.config}: {trainer.precision}; {which}, {args.blocks} blocks of "
              f"{args.steps} steps, alternating\n")
        steps = trainer._plan(0)
        window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
        trainer.model.train()
        for step in steps[:5]:  # warm-up
            trainer.train_step(step, window)
            trainer.update()
        results = {"glibc defaults": [], "freed memory kept": []}
        for b in range(args.blocks):
            # pairs of blocks over the same steps, the order turning each pair (AB, BA, ...)
            pair, second = divmod(b, 2)
            kept = bool(second) != bool(pair % 2)
            mode = list(results)[kept]
            if kept:
                keep_freed_memory(libc)
            else:
                glibc_defaults(libc)
            first = 5 + (pair * args.steps if args.varied else 0)
            block = [steps[i % len(steps)] for i in range(first, first + args.steps)]
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
    saved = mean_interval([(default - kept) * 1000 for (default, _), (kept, _) in pairs])
    print(f"kept / defaults: {means['freed memory kept'] / means['glibc defaults']:.3f} of the "
          f"time a step; faster in {faster} of {len(pairs)} block pairs; saved a step "
          f"{saved['mean']:.1f} ms [{saved['low']:.1f}, {saved['high']:.1f}] (95%, paired)")


if __name__ == "__main__":
    main()
