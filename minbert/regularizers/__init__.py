"""Regularisers: extra loss terms for a task's batch (SMART lives here). The trainer calls
`start(total_updates)` once before training, `regularizer(model, task, batch, logits)`
for each task's batch (adding the result to that task's loss), `before_step(model,
optimizer)` just before each optimizer update (the groups' lr are that update's) and
`after_step(model)` after it.

A new regulariser is one module: a subclass registered with `@REGULARIZERS.register`,
whose constructor arguments are its options (and, by name, `tasks` and `seed` if it needs
them), imported below; minbert/build.py builds the ones a run names. A run switches it
on with a table `[regularizers.NAME]` holding its options; SMART keeps its own `[smart]`
section.
"""
from __future__ import annotations

import torch

from minbert.registry import Registry

REGULARIZERS = Registry("regulariser", "regularizers")


class Regularizer:
    name = ""

    def __call__(self, model, task, batch, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start(self, total_updates: int) -> None:
        """Called once before training (also when it resumes) with the run's update count."""

    def before_step(self, model, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_step(self, model) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        """What the run's start record says about it beyond its config (e.g. distill's
        teacher runs, each folder resolved); empty when the config says it all."""
        return {}


from minbert.regularizers import anchor, distill, smart  # noqa: E402,F401  (registers the built-ins)
