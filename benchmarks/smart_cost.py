"""Cost of a SMART training step against a plain step, same model and batch, one run.

Prints the time of each, their ratio, and the share of the SMART step spent in each pass:
the clean forward, the K inner ascent passes (forward + backward w.r.t. δ), the final
adversarial forward, the teacher forward, the backward and the optimizer step.

    python benchmarks/smart_cost.py [--task sst] [--batch 32] [--steps 5] [--K 1]
"""
import argparse
import time

import torch

from _common import model_and_batches
from minbert.regularizers.smart import Smart, SmartSettings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="quora")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--K", type=int, default=1)
    args = parser.parse_args()
    config, tasks, model, batches = model_and_batches(per_task=args.batch)
    task, batch = tasks[args.task], batches[args.task]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    smart = Smart(SmartSettings(adversarial_steps=args.K), total_updates=1000)
    # time the passes separately by wrapping the regulariser's two parts
    timings = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    smart.adversarial_loss = timed("adversarial (K inner + final forward)", smart.adversarial_loss)
    smart.proximal_loss = timed("teacher forward (proximal term)", smart.proximal_loss)

    def step(use_smart):
        start = time.perf_counter()
        logits = model(batch)
        loss = task.loss(logits, batch.labels)
        t_forward = time.perf_counter()
        if use_smart:
            loss = loss + smart(model, task, batch, logits)
        t_reg = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        smart.after_step(model) if use_smart else None
        end = time.perf_counter()
        return {"clean forward": t_forward - start, "regulariser": t_reg - t_forward,
                "backward": t_backward - t_reg, "optimizer step": end - t_backward}

    for use_smart in (False, True):  # warm-up
        step(use_smart)
    timings.clear()
    plain, with_smart = [], []
    parts = {}
    for _ in range(args.steps):
        plain.append(sum(step(False).values()))
        result = step(True)
        with_smart.append(sum(result.values()))
        for k, v in result.items():
            parts[k] = parts.get(k, 0.0) + v
    plain_s, smart_s = min(plain), min(with_smart)
    print(f"task {args.task}, batch {args.batch}, K = {args.K}, {config.model.checkpoint}, "
          f"{torch.get_num_threads()} threads")
    print(f"plain step  {plain_s * 1000:8.1f} ms")
    print(f"SMART step  {smart_s * 1000:8.1f} ms   ratio {smart_s / plain_s:.2f}x\n")
    total = sum(parts.values())
    print("share of the SMART step:")
    for name in ("clean forward",):
        print(f"  {name:<40}{parts[name] / total:>6.1%}")
    for name, value in timings.items():
        print(f"  {name:<40}{value / total:>6.1%}")
    for name in ("backward", "optimizer step"):
        print(f"  {name:<40}{parts[name] / total:>6.1%}")


if __name__ == "__main__":
    main()
