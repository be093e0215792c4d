"""Gradient combining: sum, PCGrad (Yu et al. 2020), CAGrad (Liu et al. 2021), FAMO (Liu et al.
2023)."""
import copy

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


def _exact_two_task_dual(gram: np.ndarray, c: float) -> np.ndarray:
    """CAGrad's dual for two tasks, w = (t, 1 - t), solved in closed form: the objective
    f(t) = a·t + b + R·sqrt(q(t)) (q quadratic) is convex, so its minimum on [0, 1] is at
    an end or where f'(t) = 0, i.e. R²·q'(t)² = 4a²·q(t) with a and q'(t) of opposite signs."""
    mean = np.full(2, 0.5)
    radius = c * np.sqrt(mean @ gram @ mean)
    g = gram @ mean
    a, b = g[0] - g[1], g[1]
    A = gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]
    B = 2 * (gram[0, 1] - gram[1, 1])
    C = gram[1, 1]

    def f(t):
        return a * t + b + radius * np.sqrt(max(A * t * t + B * t + C, 0.0))
    roots = np.roots([radius ** 2 * 4 * A * A - 4 * a * a * A,
                      radius ** 2 * 4 * A * B - 4 * a * a * B,
                      radius ** 2 * B * B - 4 * a * a * C])
    candidates = [0.0, 1.0] + [r.real for r in roots
                               if abs(r.imag) < 1e-12 and 0 <= r.real <= 1
                               and a * (2 * A * r.real + B) <= 0]
    t = min(candidates, key=f)
    w = np.array([t, 1 - t])
    step = radius / np.sqrt(w @ gram @ w)
    return (mean + step * w) / (1 + c ** 2)


@pytest.mark.parametrize("seed", range(5))
def test_cagrad_weights_do_not_depend_on_the_gradient_scale(seed):
    """Across mean gradient norms 1e-4 … 1e4 the weights equal the exact dual solution:
    the solver used to stop at its starting point on small gradients (a scaled sum)."""
    rng = np.random.default_rng(seed)
    g1 = rng.normal(size=50)
    g2 = -0.6 * g1 + rng.normal(size=50)  # conflicting tasks
    unit = np.stack([g1, g2])
    unit /= np.linalg.norm(unit, axis=1).mean()
    exact = _exact_two_task_dual(unit @ unit.T, c=0.4)
    assert not np.allclose(exact, [0.5 / 1.16, 0.5 / 1.16], atol=1e-3)  # not the plain sum
    for norm in 10.0 ** np.arange(-4, 5):
        grads = unit * norm
        np.testing.assert_allclose(cagrad_weights(grads @ grads.T, 0.4), exact, rtol=1e-5,
                                   atol=1e-7)


def test_cagrad_three_tasks_reach_the_dual_minimum_at_every_scale():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 40))
    base[2] = -0.5 * base[0] - 0.3 * base[1] + 0.5 * rng.normal(size=40)
    base /= np.linalg.norm(base, axis=1).mean()
    gram, mean, c = base @ base.T, np.full(3, 1 / 3), 0.4
    radius = c * np.sqrt(mean @ gram @ mean)
    # the dual on a fine grid of the simplex: its minimum bounds the solver's from above
    steps = np.linspace(0, 1, 401)
    a, b = np.meshgrid(steps, steps)
    keep = a + b <= 1
    w = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1)
    dual = w @ gram @ mean + radius * np.sqrt(np.einsum("ij,jk,ik->i", w, gram, w))
    for norm in 10.0 ** np.arange(-4, 5):
        weights = cagrad_weights(gram * norm ** 2, c)
        # recover the dual weights w from v = (mean + step·w) / (1 + c²)
        found = weights * (1 + c ** 2) - mean
        found /= found.sum()
        value = found @ gram @ mean + radius * np.sqrt(found @ gram @ found)
        assert value <= dual.min() + 1e-9
        np.testing.assert_allclose(weights, cagrad_weights(gram, c), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- FAMO
def test_famo_weight_update_is_the_papers_formula():
    """ξ ← ξ − β (J_z(ξ)ᵀ δ + γ ξ), with J_z = diag(z) − z zᵀ the softmax Jacobian."""
    famo = make_combiner("famo", tasks=("a", "b", "c"), weight_lr=0.1, weight_decay=0.01,
                         weight_optimizer="sgd")
    xi = np.array([0.2, -0.1, 0.0])
    with torch.no_grad():
        famo.xi.copy_(torch.tensor(xi))
    delta = np.array([0.3, -0.2, 0.1])
    z = np.exp(xi) / np.exp(xi).sum()
    jacobian = np.diag(z) - np.outer(z, z)
    expected = xi - 0.1 * (jacobian.T @ delta + 0.01 * xi)
    famo.update_weights(torch.tensor(delta, dtype=torch.float32))
    np.testing.assert_allclose(famo.xi.detach().numpy(), expected, rtol=1e-6)


def test_famo_gradient_is_k_times_the_convex_combination_of_task_gradients():
    """Equal weights, losses 0.5 and 2: coefficients 2 · (z/ℓ) / Σ z/ℓ = (1.6, 0.4)."""
    model = TwoHeaded(("a", "b"))
    famo = make_combiner("famo", tasks=("a", "b"))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    target = {"a": 0.5, "b": 2.0}

    def losses():  # values 0.5 and 2, gradients those of the heads' outputs
        out = {t: head(torch.tanh(model.encoder(x))).pow(2).mean()
               for t, head in model.heads.items()}
        return {t: out[t] / out[t].detach() * target[t] for t in out}
    famo.backward(losses(), model)
    got = _grads(model)
    model.zero_grad()
    step = losses()
    (1.6 * step["a"] + 0.4 * step["b"]).backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(got[name], grad)


def test_famo_moves_weight_to_the_task_that_improves_least():
    famo = make_combiner("famo", tasks=("falls", "stalls"))
    model = TwoHeaded(("falls", "stalls"))
    for step in range(5):
        loss = model.heads["falls"].weight.sum() * 0 + 1.0
        losses = {"falls": loss * 0.8 ** step, "stalls": loss * 1.0}
        famo.backward(losses, model)
        model.zero_grad()
    z = famo.weights()
    assert z[1] > z[0] and torch.isclose(z.sum(), torch.tensor(1.0))


def test_famo_state_round_trips():
    famo = make_combiner("famo", tasks=("a", "b"))
    famo.update_weights(torch.tensor([0.5, -0.5]))
    restored = make_combiner("famo", tasks=("a", "b"))
    restored.load_state_dict(copy.deepcopy(famo.state_dict()))  # as saved and loaded
    famo.update_weights(torch.tensor([0.1, 0.2]))
    restored.update_weights(torch.tensor([0.1, 0.2]))
    assert torch.equal(famo.xi, restored.xi)
