"""PCGrad: gradient surgery for multi-task learning (Yu et al., NeurIPS 2020, Alg. 1).

Each task's gradient g_i is projected onto the normal plane of every other task's
original gradient g_j it conflicts with (g_i^PC · g_j < 0), the others taken in random
order:  g_i^PC ← g_i^PC − (g_i^PC · g_j) / ‖g_j‖² · g_j.  The projected gradients are
summed. Every g_i^PC stays a combination Σ_k C_ik g_k of the original gradients, so the
whole surgery runs on the Gram matrix and the result is one weighted sum of gradients.
"""
from __future__ import annotations

import torch

from minbert.combiners import COMBINERS
from minbert.combiners.gram import GramCombiner


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """C (tasks, tasks) with g_i^PC = Σ_k C[i, k] g_k; `orders[i]` lists the other tasks in
    the order task i is projected against them."""
    gram = gram.double()
    tasks = gram.shape[0]
    coefficients = torch.eye(tasks, dtype=torch.float64)
    for i in range(tasks):
        for j in orders[i]:
            dot = coefficients[i] @ gram[:, j]  # g_i^PC · g_j
            if dot < 0 and gram[j, j] > 0:
                coefficients[i, j] -= dot / gram[j, j]
    return coefficients


@COMBINERS.register
class PCGrad(GramCombiner):
    name = "pcgrad"

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def orders(self, tasks: int) -> list[list[int]]:
        orders = []
        for i in range(tasks):
            others = [j for j in range(tasks) if j != i]
            orders.append([others[k] for k in torch.randperm(len(others),
                                                             generator=self.generator)])
        return orders

    def weights(self, gram):
        return pcgrad_coefficients(gram.cpu(), self.orders(gram.shape[0])).sum(0).to(gram.device)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
