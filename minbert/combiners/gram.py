"""Shared machinery for methods that combine per-task gradients of the shared parameters.

Each task's loss is backpropagated on its own (one backward per task, no retain_graph);
its gradient of the shared encoder is copied into row t of one (tasks, parameters) buffer
and the parameters' .grad is cleared for the next task; under DDP the buffer is averaged
across ranks before the method sees it, so every rank makes the same decision. Heads get
only their own task's gradient, so they are left where backward put them. A method then
maps the Gram matrix G = g gᵀ (tasks × tasks) to weights w, and the shared gradient
becomes Σ_t w_t g_t: everything a method decides is decided on a tasks × tasks matrix.
"""
from __future__ import annotations

import torch

from minbert import distributed
from minbert.combiners import Combiner


class GramCombiner(Combiner):
    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        """(tasks,) weights of the task gradients, from their (tasks, tasks) Gram matrix."""
        raise NotImplementedError

    def backward(self, losses, model):
        if len(losses) < 2:  # e.g. the tail of a round-robin epoch: plain backward
            sum(losses.values()).backward()
            return
        shared = model.shared_parameters()
        earlier = [p.grad for p in shared]  # gradient accumulation: keep what is there
        for p in shared:
            p.grad = None
        grads = self.task_gradients(losses, shared)  # (tasks, parameters)
        weights = self.weights(grads @ grads.T).to(grads.dtype)
        combined = weights @ grads
        offset = 0
        for p, before in zip(shared, earlier):
            g = combined[offset:offset + p.numel()].view_as(p)
            p.grad = g.clone() if before is None else before + g
            offset += p.numel()

    @staticmethod
    def task_gradients(losses: dict[str, torch.Tensor], shared) -> torch.Tensor:
        total = sum(p.numel() for p in shared)
        grads = torch.zeros(len(losses), total, device=shared[0].device)
        for row, loss in enumerate(losses.values()):
            loss.backward()
            offset = 0
            for p in shared:
                if p.grad is not None:
                    grads[row, offset:offset + p.numel()] = p.grad.reshape(-1)
                    p.grad = None
                offset += p.numel()
        return distributed.all_reduce_mean_(grads)  # under DDP: the whole batch's gradients
