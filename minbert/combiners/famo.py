"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023, Alg. 1).

Why this one beside PCGrad and CAGrad: it balances the tasks' *rates of improvement* at
O(1) cost per step, with no per-task backward pass and no tasks × tasks matrix: one
backward of a weighted loss, and a K-dimensional update of the weights.

Weights z = softmax(ξ). The step descends Σ_i z_i log ℓ_i, whose gradient is
Σ_i (z_i / ℓ_i) ∇ℓ_i; divided by c = Σ_i z_i / ℓ_i it is a convex combination of the task
gradients (we multiply by the number of tasks, so that with equal weights and losses it
is the `sum` combiner and learning rates carry over). After the step, ξ moves to favour
the tasks whose log-loss fell least:

    δ_i = log ℓ_i(before) − log ℓ_i(after),   ξ ← ξ − β (J_z(ξ)ᵀ δ + γ ξ)

with J_z the softmax Jacobian; the authors' code takes that step with Adam (default here)
rather than plain gradient descent (`weight_optimizer = "sgd"`). The paper measures
ℓ(after) on the same batch with an extra forward pass; to stay O(1) we use each task's
loss at its next step, i.e. on the next batch (an unbiased but noisier estimate of the
change). Under torchrun the losses are averaged across ranks first, so every rank keeps
the same weights.
"""
from __future__ import annotations

import torch

from minbert import distributed
from minbert.combiners import COMBINERS, Combiner


@COMBINERS.register
class FAMO(Combiner):
    name = "famo"

    def __init__(self, tasks, weight_lr: float = 0.025, weight_decay: float = 0.01,
                 weight_optimizer: str = "adam", min_loss: float = 0.0):
        if not weight_lr > 0 or not weight_decay >= 0:
            raise ValueError("train.combiner_options: FAMO needs weight_lr > 0 and "
                             f"weight_decay ≥ 0, got {weight_lr} and {weight_decay}")
        if weight_optimizer not in ("adam", "sgd"):
            raise ValueError(f"train.combiner_options.weight_optimizer = {weight_optimizer!r}; "
                             "use adam or sgd")
        self.tasks = list(tasks)  # names, in the run's order
        self.min_loss = min_loss
        self.xi = torch.zeros(len(self.tasks), requires_grad=True)  # ξ, one logit per task
        optimizer = torch.optim.Adam if weight_optimizer == "adam" else torch.optim.SGD
        self.optimizer = optimizer([self.xi], lr=weight_lr, weight_decay=weight_decay)
        self.previous = torch.full((len(self.tasks),), float("nan"))  # last log ℓ per task

    def weights(self) -> torch.Tensor:
        """z = softmax(ξ), one weight per task."""
        return torch.softmax(self.xi.detach(), 0)

    def update_weights(self, delta: torch.Tensor) -> None:
        """ξ ← ξ − β (J_z(ξ)ᵀ δ + γ ξ), taken by the weight optimizer; δ_i = log ℓ_i(before)
        − log ℓ_i(after), 0 for a task not seen in both."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            torch.softmax(self.xi, 0).backward(delta)  # ξ.grad = J_z(ξ)ᵀ δ
        self.optimizer.step()  # its weight decay adds γ ξ

    def backward(self, losses, model):
        rows = torch.tensor([self.tasks.index(t) for t in losses])
        values = torch.stack([loss.detach().float() for loss in losses.values()])
        values = distributed.all_reduce_mean_(values.clone()).cpu()  # same on every rank
        log_losses = (values - self.min_loss).clamp_min(1e-8).log()
        delta = torch.zeros(len(self.tasks))
        delta[rows] = self.previous[rows] - log_losses
        delta = delta.nan_to_num(0.0)  # a task's first step: no change to measure yet
        if delta.any():
            self.update_weights(delta)
        self.previous[rows] = log_losses
        # the gradient of K·Σ z_i log ℓ_i / c over the tasks of this step: coefficients
        # K·(z_i / ℓ_i) / Σ_j (z_j / ℓ_j), a convex combination times K
        ratio = self.weights()[rows] / log_losses.exp()
        coefficients = len(rows) * ratio / ratio.sum()
        device = next(iter(losses.values())).device
        sum(c * loss for c, loss in zip(coefficients.to(device), losses.values())).backward()

    def state_dict(self):
        return {"xi": self.xi.detach().clone(), "previous": self.previous.clone(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.xi.copy_(state["xi"])
        self.previous = state["previous"].clone()
        self.optimizer.load_state_dict(state["optimizer"])
