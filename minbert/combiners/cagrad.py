"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021, Alg. 1).

Why this one beside PCGrad: CAGrad provably converges to a minimum of the *average* loss
(PCGrad does not), it reports gains over PCGrad and GradVac on NYUv2, CityScapes and
Meta-World MT10/MT50, and, like PCGrad, it needs only the tasks × tasks Gram matrix.

Within a ball of radius c‖g0‖ around the mean gradient g0 it takes the update d that
maximises the worst task's improvement. Its dual picks simplex weights w minimising
g_wᵀg0 + c‖g0‖‖g_w‖ (Eq. 5); then d = g0 + (c‖g0‖/‖g_w‖) g_w, rescaled by 1/(1 + c²) as
in the authors' code. We scale d by the number of tasks so that, with no conflict and
c = 0, it equals the `sum` combiner and learning rates carry over.
"""
from __future__ import annotations

import numpy as np
import torch

from minbert.combiners import COMBINERS
from minbert.combiners.gram import GramCombiner


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """Weights v with d = Σ v_k g_k (before the task-count scaling).

    The weights do not depend on the overall scale of the gradients (scaling every g by s
    scales every term of the dual by s²), so the dual is solved on the Gram matrix divided
    by its mean diagonal: its objective is of order one whatever the gradients' norms, and
    SLSQP's tolerances mean the same at any scale."""
    from scipy.optimize import minimize  # here: scipy.optimize costs ~0.5 s to import

    tasks = gram.shape[0]
    scale = np.trace(gram) / tasks
    if not np.isfinite(scale) or scale <= 0:  # every gradient zero: nothing to combine
        return np.full(tasks, 1.0 / tasks) / (1.0 + c ** 2)
    gram = gram / scale
    mean = np.full(tasks, 1.0 / tasks)
    g0_norm = np.sqrt(max(mean @ gram @ mean, 0.0))
    radius = c * g0_norm

    def objective(w):
        return w @ gram @ mean + radius * np.sqrt(max(w @ gram @ w, 0.0) + 1e-12)

    result = minimize(objective, mean, bounds=[(0.0, 1.0)] * tasks, method="SLSQP",
                      constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
                      options={"ftol": 1e-12, "maxiter": 500})
    w = result.x
    gw_norm = np.sqrt(max(w @ gram @ w, 0.0))
    step = radius / (gw_norm + 1e-12)
    return (mean + step * w) / (1.0 + c ** 2)


@COMBINERS.register
class CAGrad(GramCombiner):
    name = "cagrad"

    def __init__(self, c: float = 0.4):
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not c >= 0:
            raise ValueError(f"train.combiner_options.c (CAGrad's radius) must be ≥ 0, got {c}")
        self.c = c

    def weights(self, gram):
        tasks = gram.shape[0]
        v = cagrad_weights(gram.double().cpu().numpy(), self.c)
        return torch.as_tensor(v * tasks, device=gram.device)
