"""Cost of a SMART training step against a plain step, same model and batch, one run.

Prints the mean time of each (and of SMART with only its adversarial or only its proximal
term, and of its cheaper settings: a share of the batch, every k-th batch, R3F's noise
without ascent, R-Drop), their ratios, and the share of the full SMART step spent in each
pass:
the clean forward, the K inner ascent passes (forward + backward w.r.t. δ), the final
adversarial forward, the teacher forward, the backward and the optimizer step.

    python benchmarks/smart_cost.py [--task sst] [--batch 32] [--steps 8] [--K 1]
                                    [--precision auto|fp32|bf16]

The step (task loss, teacher, proximal term) runs in --precision (auto: bf16 on a CPU
with avx512_bf16, as training does); SMART's adversarial passes always run in fp32.
"""
import argparse
import time

import torch

from _common import model_and_batches
from minbert.config import PRECISIONS, SmartConfig
from minbert.devices import machine_summary, resolve_precision
from minbert.regularizers.smart import Smart


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="quora")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="a multiple of 8 (every-8th)")
    parser.add_argument("--K", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    args = parser.parse_args()
    config, tasks, model, batches = model_and_batches(per_task=args.batch)
    task, batch = tasks[args.task], batches[args.task]
    dtype, precision = resolve_precision(args.precision, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    variants = {  # name: SMART settings
        "SMART (adversarial + proximal)": {},
        "adversarial term only (μ = 0)": {"proximal_weight": 0.0},
        "proximal term only (λs = 0)": {"adversarial_weight": 0.0},
        "SMART, adversarial_share 0.25": {"adversarial_share": 0.25},
        "SMART, adversarial_every 4": {"adversarial_every": 4},
        "SMART, adversarial_share 0.1": {"adversarial_share": 0.1},
        "SMART, adversarial_every 8": {"adversarial_every": 8},
        "adversarial only, share 0.1 (μ = 0)": {"adversarial_share": 0.1,
                                                 "proximal_weight": 0.0},
        "SMART, R3F (adversarial_steps 0)": {"adversarial_steps": 0},
        "R-Drop (2 dropout passes only)": {"adversarial_steps": 0, "noise_std": 0.0,
                                           "detach_target": False, "proximal_weight": 0.0},
    }
    smarts = {name: Smart(SmartConfig(**{"adversarial_steps": args.K, **settings}))
              for name, settings in variants.items()}
    for smart in smarts.values():
        smart.start(total_updates=1000)
    full = smarts["SMART (adversarial + proximal)"]
    # time the passes separately by wrapping the full regulariser's two parts
    timings = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    full.adversarial_loss = timed("adversarial (K inner + final forward)", full.adversarial_loss)
    full.proximal_loss = timed("teacher forward (proximal term)", full.proximal_loss)

    def step(smart):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(batch).float()
            loss = task.loss(logits, batch.labels)
            t_forward = time.perf_counter()
            if smart is not None:
                loss = loss + smart(model, task, batch, logits)
        t_reg = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        smart.after_step(model) if smart is not None else None
        end = time.perf_counter()
        return {"clean forward": t_forward - start, "regulariser": t_reg - t_forward,
                "backward": t_backward - t_reg, "optimizer step": end - t_backward}

    for smart in (None, *smarts.values()):  # warm-up
        step(smart)
    timings.clear()
    times = {name: [] for name in ("plain", *smarts)}
    parts = {}
    for _ in range(args.steps):  # interleaved, so a slow spell of the machine hits all
        times["plain"].append(sum(step(None).values()))
        for name, smart in smarts.items():
            result = step(smart)
            times[name].append(sum(result.values()))
            if smart is full:
                for k, v in result.items():
                    parts[k] = parts.get(k, 0.0) + v
    mean = {name: sum(values) / len(values) for name, values in times.items()}
    print(f"machine: {machine_summary()}")
    print(f"task {args.task}, batch {args.batch}, K = {args.K}, {config.model.checkpoint}, "
          f"{torch.get_num_threads()} threads, step precision {precision}, "
          f"mean of {args.steps}")
    for name, value in mean.items():
        print(f"{name:<38}{value * 1000:8.1f} ms   ratio {value / mean['plain']:.2f}x")
    total = sum(parts.values())
    print("\nshare of the full SMART step:")
    for name in ("clean forward",):
        print(f"  {name:<40}{parts[name] / total:>6.1%}")
    for name, value in timings.items():
        print(f"  {name:<40}{value / total:>6.1%}")
    for name in ("backward", "optimizer step"):
        print(f"  {name:<40}{parts[name] / total:>6.1%}")
    floor(model, task, batch, full, optimizer, args.steps, mean["plain"])


def floor(model, task, batch, smart, optimizer, steps, plain):
    """Each pass timed alone: what SMART at K = 1 must add to a plain step, at the least."""
    times = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for _ in range(steps + 1):
        target = model(batch).detach()
        embeds = [e.detach() for e in model.embed(batch)]
        deltas = [torch.zeros_like(e, requires_grad=True) for e in embeds]
        model.requires_grad_(False)
        inner = timed("inner forward (parameters frozen)", lambda: model(
            batch, [e + d for e, d in zip(embeds, deltas)]))
        divergence = task.divergence(inner.float(), target, "kl")
        timed("inner backward (w.r.t. δ only)", lambda: torch.autograd.grad(divergence, deltas))
        model.requires_grad_(True)
        final = timed("final forward", lambda: model(batch, [e + d for e, d in
                                                             zip(embeds, deltas)]))
        divergence = task.divergence(final.float(), target, "sym-kl")
        timed("final backward (parameters)", divergence.backward)
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            timed("teacher forward (no grad, eval)", lambda: smart.teacher(batch))
        timed("teacher update", lambda: smart.after_step(model))
    best = {name: min(values[1:]) for name, values in times.items()}  # first is a warm-up
    print("\neach extra pass alone (best of the same steps):")
    for name, value in best.items():
        print(f"  {name:<40}{value * 1000:8.1f} ms")
    extra = sum(best.values())
    print(f"floor: plain + these = {(plain + extra) * 1000:.1f} ms, "
          f"ratio {(plain + extra) / plain:.2f}x")


if __name__ == "__main__":
    main()
