"""Step time and peak memory of gradient combining (pcgrad, cagrad, famo) against `sum`, 3 tasks.

Each method runs in its own process so that its peak resident memory is its own. Prints
time per step, overhead over `sum` (whose one backward covers the three tasks' graphs, as
the three separate backwards of surgery do), peak RSS, and the flat buffer surgery needs.

    python benchmarks/surgery_cost.py [--batch 16] [--steps 5]
"""
import argparse
import json
import multiprocessing as mp
import resource
import time

import torch


def measure(method: str, batch: int, steps: int, queue):
    from _common import model_and_batches
    from minbert.combiners import make_combiner
    config, tasks, model, batches = model_and_batches(per_task=batch)
    combiner = make_combiner(method, seed=0, tasks=tasks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        losses = {name: tasks[name].loss(model(b), b.labels) for name, b in batches.items()}
        combiner.backward(losses, model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    shared = sum(p.numel() for p in model.shared_parameters())
    queue.put({"method": method, "step_s": min(times), "shared": shared,
               "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    results = {}
    for method in ("sum", "pcgrad", "cagrad", "famo"):
        queue = context.Queue()
        process = context.Process(target=measure, args=(method, args.batch, args.steps, queue))
        process.start()
        results[method] = queue.get()
        process.join()
    base = results["sum"]
    shared = base["shared"]
    print(f"3 tasks, batch {args.batch} each, cross-encoded, {shared / 1e6:.1f}M shared "
          f"parameters, {torch.get_num_threads()} threads")
    print(f"{'method':<8}{'step ms':>9}{'overhead':>10}{'peak RSS MiB':>14}{'extra MiB':>11}")
    for method, r in results.items():
        print(f"{method:<8}{r['step_s'] * 1000:>9.1f}{r['step_s'] / base['step_s'] - 1:>+10.1%}"
              f"{r['peak_mib']:>14.0f}{r['peak_mib'] - base['peak_mib']:>+11.0f}")
    flat = 3 * shared * 4 / 2 ** 20
    print(f"\nflat per-task gradient buffer: 3 x {shared / 1e6:.1f}M x 4 bytes = {flat:.0f} MiB; "
          f"for bert-base (109.5M shared) it is {3 * 109.5e6 * 4 / 2 ** 20:.0f} MiB")
    print(json.dumps({m: round(r["step_s"], 4) for m, r in results.items()}))


if __name__ == "__main__":
    main()
