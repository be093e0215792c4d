"""Regularisers: extra loss terms for a task's batch (SMART lives here). The trainer calls
`regularizer(model, task, batch, logits)` for each task's batch, adds the result to that
task's loss, and calls `after_step(model)` after each optimizer update."""
from __future__ import annotations

import torch


class Regularizer:
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
    regularizers = []
    if config.smart.enabled:
        from minbert.regularizers.smart import Smart
        regularizers.append(Smart(config.smart, total_updates))
    return regularizers
