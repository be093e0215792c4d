"""Decay towards the starting weights: AdamW's decoupled weight decay, pulling the encoder
towards the weights training started from (the pretrained checkpoint, or `model.init_from`)
instead of towards zero. The transfer-learning regulariser L2-SP (Li et al. 2018, "Explicit
Inductive Bias for Transfer Learning with Convolutional Networks"), decoupled from the
gradient as AdamW decouples weight decay (Loshchilov & Hutter 2019), so that Adam's
per-parameter scaling does not weaken it.

    [regularizers.anchor]
    weight = 50.0     # λ: before each update θ ← θ − lr · λ · (θ − θ₀), lr the group's rate

Why: a multi-task model moves its encoder further from the pretrained weights than any
specialist does (more updates, three tasks pulling); the anchor bounds that drift. With λ
the pull has a time constant of 1 / (lr · λ) updates (200 at lr 1e-4 and λ = 50), and it
fades with the learning-rate schedule, as weight decay does. The task heads are not
anchored (they start from random weights). Measured once (lean-cpu, seed 0, λ = 100):
every task lower than without it (docs/results.md); weaker pulls are not measured.
"""
from __future__ import annotations

import torch

from minbert.regularizers import REGULARIZERS, Regularizer


@REGULARIZERS.register
class Anchor(Regularizer):
    name = "anchor"

    def __init__(self, weight: float = 50.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"regularizers.anchor.weight: a number ≥ 0, got {weight!r}")
        self.weight = float(weight)
        self.anchors: list[torch.Tensor] | None = None  # θ₀, the encoder's, in its order
        self._groups = None  # built at the first update

    def __call__(self, model, task, batch, logits):
        return 0.0  # no loss term: the pull acts on the weights, in before_step

    def before_step(self, model, optimizer) -> None:
        if self.anchors is None:  # the first update: the weights training started from
            self.anchors = [p.detach().clone() for p in model.encoder.parameters()]
        if self._groups is None:  # each optimizer group's encoder weights and their anchors
            anchor = dict(zip(model.encoder.parameters(), self.anchors))
            self._groups = [([p for p in g["params"] if p in anchor],
                             [anchor[p] for p in g["params"] if p in anchor])
                            for g in optimizer.param_groups]
        with torch.no_grad():
            for group, (params, anchors) in zip(optimizer.param_groups, self._groups):
                live = [(p, a) for p, a in zip(params, anchors) if p.requires_grad]
                if live and group["lr"] * self.weight > 0:  # frozen weights stay as they are
                    torch._foreach_lerp_([p for p, _ in live], [a for _, a in live],
                                         min(1.0, group["lr"] * self.weight))

    def state_dict(self):
        return {"anchors": self.anchors}

    def load_state_dict(self, state):
        self.anchors, self._groups = state.get("anchors"), None
