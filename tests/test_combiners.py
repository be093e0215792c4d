"""Gradient combining: sum, PCGrad (Yu et al. 2020) and CAGrad (Liu et al. 2021)."""
import numpy as np
import pytest
import torch
from torch import nn

from minbert.combiners import make_combiner
from minbert.combiners.cagrad import cagrad_weights
from minbert.combiners.pcgrad import PCGrad, pcgrad_coefficients


class TwoHeaded(nn.Module):
    """A shared 'encoder' and one head per task, with the MultiTaskModel interface."""

    def __init__(self, tasks=("a", "b", "c")):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(6, 5)
        self.heads = nn.ModuleDict({t: nn.Linear(5, 1) for t in tasks})

    def shared_parameters(self):
        return list(self.encoder.parameters())

    def losses(self, seed=1):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 6, generator=g)
        return {t: (head(torch.tanh(self.encoder(x))) - torch.randn(8, 1, generator=g)
                    ).pow(2).mean() * (i + 1) for i, (t, head) in enumerate(self.heads.items())}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _flat_task_grads(model, seed=1):
    rows = []
    for loss in model.losses(seed).values():
        model.zero_grad()
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]))
    model.zero_grad()
    return torch.stack(rows).double()


def test_sum_equals_backprop_of_the_summed_loss():
    model = TwoHeaded()
    sum(model.losses().values()).backward()
    expected = _grads(model)
    model.zero_grad()
    make_combiner("sum").backward(model.losses(), model)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected[name])


def test_pcgrad_two_task_toy_case_of_the_paper():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # conflicting: dot = -1
    c = pcgrad_coefficients(g @ g.T, [[1], [0]])
    projected = c @ g
    # g1 projected on the normal plane of g2, and g2 on that of g1
    torch.testing.assert_close(projected[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(projected[1], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert projected[0] @ g[1] >= -1e-12 and projected[1] @ g[0] >= -1e-12


def test_non_conflicting_gradients_pass_unchanged():
    g = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.0, 0.3, 1.0]], dtype=torch.float64)
    assert (g @ g.T).min() >= 0
    c = pcgrad_coefficients(g @ g.T, [[1, 2], [0, 2], [0, 1]])
    torch.testing.assert_close(c, torch.eye(3, dtype=torch.float64))


def test_each_projection_removes_only_the_conflicting_component():
    torch.manual_seed(3)
    g = torch.randn(3, 50, dtype=torch.float64)
    g[1] = -g[0] + 0.3 * torch.randn(50, dtype=torch.float64)  # force a conflict
    orders = [[1, 2], [2, 0], [0, 1]]
    projected = pcgrad_coefficients(g @ g.T, orders) @ g
    for i, order in enumerate(orders):
        last = order[-1]  # the last projection leaves no conflict with its gradient
        assert projected[i] @ g[last] >= -1e-9
        residual = projected[i] - g[i]  # what was removed lies in the span of conflicting g_j
        span = g[order]
        coef = torch.linalg.lstsq(span.T, residual).solution
        torch.testing.assert_close(span.T @ coef, residual)


def test_pcgrad_writes_the_sum_of_projected_gradients_and_leaves_heads_alone():
    model = TwoHeaded()
    g = _flat_task_grads(model)
    # heads' own-task gradients, from plain backward
    sum(model.losses().values()).backward()
    head_grads = {n: v for n, v in _grads(model).items() if n.startswith("heads.")}
    model.zero_grad()
    combiner = PCGrad(seed=7)
    orders = PCGrad(seed=7).orders(3)
    combiner.backward(model.losses(), model)
    expected = (pcgrad_coefficients(g @ g.T, orders) @ g).sum(0)
    got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]).double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for name, grad in _grads(model).items():
        if name.startswith("heads."):
            torch.testing.assert_close(grad, head_grads[name])


def test_the_same_seed_gives_the_same_order():
    a, b, c = PCGrad(seed=1), PCGrad(seed=1), PCGrad(seed=2)
    orders_a = [a.orders(4) for _ in range(5)]
    assert orders_a == [b.orders(4) for _ in range(5)]
    assert orders_a != [c.orders(4) for _ in range(5)]
    restored = PCGrad(seed=99)
    restored.load_state_dict(a.state_dict())
    assert restored.orders(4) == a.orders(4)


def test_one_task_left_falls_back_to_plain_backward():
    model = TwoHeaded(tasks=("a",))
    model.losses()["a"].backward()
    expected = _grads(model)
    model.zero_grad()
    PCGrad().backward(model.losses(), model)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected[name])


def test_surgery_adds_to_accumulated_gradients():
    model = TwoHeaded()
    PCGrad(seed=0).backward(model.losses(1), model)
    once = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]).clone()
    PCGrad(seed=0).backward(model.losses(1), model)
    twice = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    torch.testing.assert_close(twice, 2 * once)


def test_cagrad_without_conflict_and_c_zero_is_the_sum():
    g = np.array([[1.0, 0.1], [0.2, 1.0]])
    v = cagrad_weights(g @ g.T, c=0.0)
    np.testing.assert_allclose(v * 2, [1.0, 1.0], atol=1e-6)


def test_cagrad_improves_the_worst_task_over_the_mean_gradient():
    g = np.array([[1.0, 0.0], [-0.8, 0.3]])  # strong conflict
    gram = g @ g.T
    mean = g.mean(0)
    d = cagrad_weights(gram, c=0.5) @ g
    worst = min(g @ d / np.linalg.norm(d))
    assert worst > min(g @ mean / np.linalg.norm(mean))


def test_unknown_combiner_and_bad_options_are_named():
    with pytest.raises(ValueError, match="train.combiner"):
        make_combiner("mgda")
    with pytest.raises(ValueError, match="combiner_options"):
        make_combiner("pcgrad", alpha=1)
