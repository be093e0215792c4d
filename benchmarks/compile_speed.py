"""torch.compile on the training step: eager against compiled, in one process.

The real trainer's steps (round-robin, length-bucketed batches, the config's precision)
over a slice of each task's training file, run twice per mode: the first pass pays
compilation (and a recompile per new shape until the compiler marks lengths dynamic), the
second is the steady state. The compile cost is then amortised over one epoch of the
config (its steps per epoch), which is what `train.compile = true` would cost or save.

    python benchmarks/compile_speed.py [--config configs/quick.toml] [--per-task 256]
"""
import argparse
import tempfile
import time
import warnings

import torch

from minbert.build import build_plan, encode_train
from minbert.config import PRECISIONS, load_config
from minbert.data import EncodedTask
from minbert.devices import machine_summary
from minbert.loading import build_model
from minbert.tasks import build_tasks
from minbert.training import Trainer


def run_passes(config, tasks, model, train_sets, passes=2) -> list[tuple[float, int]]:
    """(seconds, steps) of each pass over the same step plan."""
    trainer = Trainer(build_plan(config), model, train_sets, dev_sets={})
    trainer.model.train()
    plan = trainer._plan(0)
    results = []
    for _ in range(passes):
        window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
        start = time.perf_counter()
        for step in plan:
            trainer.train_step(step, window)  # in the config's precision (autocast inside)
            trainer.update()
        results.append((time.perf_counter() - start, len(plan)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quick.toml")
    parser.add_argument("--per-task", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"machine: {machine_summary()}")
    rows = {}
    for mode in ("eager", "compiled"):
        with tempfile.TemporaryDirectory() as run_dir:
            overrides = [f'run_dir="{run_dir}"', f'train.precision="{args.precision}"',
                         f"train.compile={'true' if mode == 'compiled' else 'false'}",
                         f'train.compile_backend="{args.backend}"']
            config = load_config(args.config, overrides)
            tasks = build_tasks(config)
            torch.manual_seed(0)
            model, tokenizer = build_model(config, tasks)
            full, _, _ = encode_train(config, tasks, tokenizer)
            epoch_steps = len(Trainer(build_plan(config), model, full, dev_sets={})._plan(0))
            train_sets = {name: EncodedTask(name, data.examples.subset(
                range(min(args.per_task, len(data)))), tokenizer, model.encodings[name])
                for name, data in full.items()}
            first, steady = run_passes(config, tasks, model, train_sets)
        rows[mode] = (first, steady, epoch_steps)
    eager_step = rows["eager"][1][0] / rows["eager"][1][1]
    compiled_step = rows["compiled"][1][0] / rows["compiled"][1][1]
    first_seconds, steps = rows["compiled"][0]
    compile_cost = first_seconds - steps * compiled_step
    epoch_steps = rows["eager"][2]
    eager_epoch = epoch_steps * eager_step
    compiled_epoch = compile_cost + epoch_steps * compiled_step
    print(f"{args.config}, precision {args.precision}, {args.per_task} examples a task "
          f"({steps} steps a pass); one epoch of the config: {epoch_steps} steps\n")
    print(f"{'mode':<10}{'first pass s':>13}{'steady s/step':>15}")
    for mode, ((first, n), (steady, _), _) in rows.items():
        print(f"{mode:<10}{first:>13.1f}{steady / n:>15.3f}")
    print(f"\nsteady state: compiled is {eager_step / compiled_step:.2f}x eager per step")
    print(f"compile cost (first pass minus its steps at the steady rate): {compile_cost:.0f} s")
    print(f"one epoch ({epoch_steps} steps): eager {eager_epoch:.0f} s, compiled "
          f"{compiled_epoch:.0f} s: {eager_epoch / compiled_epoch:.2f}x")


if __name__ == "__main__":
    main()
