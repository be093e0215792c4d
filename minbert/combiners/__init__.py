"""Gradient-combining methods: given one step's per-task losses, set the gradients the
optimizer applies. The trainer calls `combiner.backward(losses, model)` and never knows
which method it is; a new method is one module here, registered by name."""
from __future__ import annotations

import torch


class Combiner:
    name = ""

    def backward(self, losses: dict[str, torch.Tensor], model) -> None:
        """Accumulates into `.grad` of the model's parameters (gradient accumulation adds up)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


COMBINERS: dict[str, type[Combiner]] = {}


def register(cls: type[Combiner]) -> type[Combiner]:
    COMBINERS[cls.name] = cls
    return cls


def make_combiner(name: str, seed: int = 0, **options) -> Combiner:
    if name not in COMBINERS:
        raise ValueError(f"train.combiner = {name!r}; use one of {', '.join(sorted(COMBINERS))}")
    try:
        return COMBINERS[name](seed=seed, **options)
    except TypeError as e:
        raise ValueError(f"train.combiner_options for {name!r}: {e}") from None


from minbert.combiners import cagrad, pcgrad  # noqa: E402,F401  (registers the built-ins)
from minbert.combiners import sum as _sum  # noqa: E402,F401
