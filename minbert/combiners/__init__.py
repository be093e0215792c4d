"""Gradient-combining methods: given one step's per-task losses, set the gradients the
optimizer applies. The trainer calls `combiner.backward(losses, model)` and never knows
which method it is; a new method is one module here, registered by name:

    @COMBINERS.register
    class MyMethod(Combiner):
        name = "mine"
        def __init__(self, strength: float = 1.0, seed: int = 0): ...   # options; seed, tasks
                                                                          # if it needs them
        def backward(self, losses, model): ...

and imported below. `train.combiner = "mine"` and `train.combiner_options = {strength = 2}`
then select it; the config is checked against the constructor's signature.
"""
from __future__ import annotations

import torch

from minbert.registry import Registry


class Combiner:
    name = ""

    def backward(self, losses: dict[str, torch.Tensor], model) -> None:
        """Accumulates into `.grad` of the model's parameters (gradient accumulation adds up)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


COMBINERS = Registry("combiner", "train.combiner")


def make_combiner(name: str, seed: int = 0, tasks=(), **options) -> Combiner:
    """`seed` and the run's `tasks` (by name, in order) reach the methods whose
    constructors name them, as `seed`, `tasks` and `total_updates` reach regularisers."""
    return COMBINERS.build(name, options, "train.combiner_options", seed=seed, tasks=tasks)


from minbert.combiners import cagrad, famo, pcgrad, plain  # noqa: E402,F401  (the built-ins)
