"""One model from several: the mean of their weights (a "model soup", Wortsman et al. 2022).

Runs fine-tuned from the same pretrained weights with the same recipe (seeds, or a recipe
and its distilled variant) stay close enough in weight space that their mean is a good
model itself, often better than each: an ensemble's gain at one model's cost. `minbert
evaluate RUN RUN ... --average --out DIR` writes that model into DIR (config.json and
best.pt, so `minbert.load`, predict, export and `model.init_from` read it like a run) and
scores it on dev like an ensemble (compare and report read DIR).

Only runs whose models are alike average: the same pretrained checkpoint and model
settings, the same tasks read the same way (encoding, pooling, heads), the same weight
names and shapes. The first run's config is the soup's.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minbert.loading import load_run
from minbert.runs import RunError, RunFolder, save_state


def _signature(run) -> dict:
    """What two runs must share for their weights to mean the same thing."""
    model = {k: v for k, v in run.config.to_dict()["model"].items() if k != "init_from"}
    return {"model": model, "tasks": list(run.tasks),
            "outputs": {name: task.output_spec() for name, task in run.tasks.items()},
            "encodings": dict(run.model.encodings), "poolings": dict(run.model.poolings),
            "heads": {name: type(head).__name__ for name, head in run.model.heads.items()},
            "own layers": {name: len(own) for name, own in run.model.task_layers.items()}}


def average_weights(members: list[str | Path]) -> tuple[dict, dict[str, torch.Tensor]]:
    """The first member's config (as a dict) and the mean of every member's chosen weights
    (in float32, stored in each tensor's own dtype; integer buffers from the first)."""
    if len(members) < 2:
        raise RunError(f"--average: give two or more runs (or a --seeds folder), got "
                       f"{len(members)}")
    first = load_run(members[0])
    expected = _signature(first)
    reference = first.model.state_dict()
    total = {k: v.float().clone() if v.is_floating_point() else v for k, v in reference.items()}
    for member in members[1:]:
        run = load_run(member)
        signature = _signature(run)
        for key, value in expected.items():
            if signature[key] != value:
                raise RunError(f"--average: {member} and {members[0]} differ in their {key} "
                               f"({signature[key]} against {value}); only alike models "
                               "average")
        state = run.model.state_dict()
        for name, tensor in total.items():
            if name not in state or state[name].shape != tensor.shape:
                raise RunError(f"--average: {member} has no weight {name} of shape "
                               f"{tuple(tensor.shape)}, as {members[0]} does")
            if tensor.is_floating_point():
                tensor += state[name].float()
    mean = {name: (tensor / len(members)).to(reference[name].dtype)
            if tensor.is_floating_point() else tensor for name, tensor in total.items()}
    return first.config.to_dict(), mean


def write_average(out: str | Path, members: list[str | Path]) -> RunFolder:
    """The averaged model as a loadable folder: config.json (run_dir = out) and best.pt."""
    config, weights = average_weights(members)
    folder = RunFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_config({**config, "run_dir": str(out)})
    save_state({"model": weights, "averaged": [str(m) for m in members]}, folder.best)
    return folder
