"""Regularisers: extra loss terms for a task's batch (SMART lives here). The trainer calls
`regularizer(model, task, batch, logits)` for each task's batch, adds the result to that
task's loss, and calls `after_step(model)` after each optimizer update.

A new regulariser is one module: a subclass registered with `@REGULARIZERS.register`,
whose constructor arguments are its options (and, by name, `tasks`, `total_updates` and
`seed` if it needs them), imported below. A run switches it on with a table
`[regularizers.NAME]` holding its options; SMART keeps its own `[smart]` section.
"""
from __future__ import annotations

import torch

from minbert.registry import Registry

REGULARIZERS = Registry("regulariser", "regularizers")


class Regularizer:
    name = ""

    def __call__(self, model, task, batch, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, model) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_regularizers(config, tasks, total_updates: int) -> list[Regularizer]:
    """The regularisers a run config switches on, in the order their terms are added."""
    context = {"tasks": tasks, "total_updates": total_updates, "seed": config.train.seed}
    built = []
    if config.smart.enabled:
        built.append(REGULARIZERS.build("smart", {"settings": config.smart}, **context))
    for name, options in config.regularizers.items():
        built.append(REGULARIZERS.build(name, options, f"regularizers.{name}", **context))
    return built


from minbert.regularizers import distill, smart  # noqa: E402,F401  (registers the built-ins)
