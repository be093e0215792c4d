"""SMART (Jiang et al., ACL 2020): smoothness-inducing adversarial regularisation and
Bregman proximal-point optimisation with a momentum teacher.

For one task's batch the regulariser adds to that task's loss (Eq. 1 and 4 of the paper)

    λs · E[ℓs(f(x + δ; θ), f(x; θ))]  +  μ · E[ℓs(f(x; θ), f(x; θ̃))]

where δ maximises ℓs within an ε-ball (Eq. 3, approximated by K projected ascent steps
from Gaussian noise) and θ̃ ← (1−β)θ + βθ̃ is the teacher after every update (Alg. 1).

Where δ lives: on the *word embeddings* (the token lookup, before position and segment
embeddings are added and LayerNorm is applied). They are the only input-dependent part
of the embedding layer, so δ perturbs what the sentence says, not where a token sits;
for bi-encoded pairs both sentences' word embeddings are perturbed, each with its own δ.
Every reduction is a batch mean, so λs does not scale with the batch size.

Precision: δ is tiny (ε = 1e-5 on embeddings of size ~3e-2), far below the resolution of
bf16 (8-bit mantissa) or TF32 matmuls: under autocast f(x + δ) − f(x) is rounding noise
(~1e-3 in the logits against a true ~1e-5), and the term would regularise that noise. So
the adversarial passes, and their target f(x), run in fp32 with IEEE matmuls whenever
there is a δ (R-Drop's setting has none and keeps the step's precision); when the step
runs under autocast the fp32 target is one extra no-grad forward. The task loss,
the teacher and the proximal term keep the step's precision.

Cheaper settings of the same term (each per task, in [smart] or its overrides):
- `adversarial_share = p`: the term on a seeded random share p of each batch; the mean
  over a uniform subset estimates the batch mean without bias, at about p of the cost.
- `adversarial_every = k`: the term on every k-th batch of a task (weight λs on those).
- `adversarial_steps = 0`: no ascent step, δ is the Gaussian noise itself: R3F
  (Aghajanyan et al. 2021), one extra forward and backward instead of two.
- `adversarial_steps = 0, noise_std = 0, detach_target = false` with dropout on: the
  divergence between two dropout passes, R-Drop (Liang et al. 2021).
`detach_target`: the final term treats f(x) as a constant (virtual adversarial training's
choice, the default here); false lets the gradient flow through both sides, as the
paper's R_s, mt-dnn and smart-pytorch do.
"""
from __future__ import annotations

import contextlib
import copy

import torch

from minbert.config import SmartConfig
from minbert.regularizers import REGULARIZERS, Regularizer


def _per_token_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm over the hidden dimension, (batch, seq, 1)."""
    if norm == "inf":
        return x.abs().amax(-1, keepdim=True)
    return x.norm(dim=-1, keepdim=True)


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float,
                norm: str) -> torch.Tensor:
    """δ + η·g/‖g‖ per token, then projected back into the ε-ball of the same norm."""
    delta = delta + step_size * grad / (_per_token_norm(grad, norm) + 1e-12)
    if norm == "inf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / (_per_token_norm(delta, norm) + 1e-12)).clamp(max=1.0)


@contextlib.contextmanager
def full_precision(device_type: str):
    """fp32 with IEEE matmuls inside, whatever autocast or matmul precision is set outside."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def _frozen(model):
    """Parameters temporarily without requires_grad (restored as they were, frozen or not)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _reduced_precision(device_type: str) -> bool:
    return (torch.is_autocast_enabled(device_type)
            or torch.get_float32_matmul_precision() != "highest")


@REGULARIZERS.register
class Smart(Regularizer):
    """The SMART terms of `settings` (a run's `[smart]` section, per-task overrides
    included); the run's number of updates (`start`) sets the teacher's warm phase."""
    name = "smart"

    def __init__(self, settings: SmartConfig, seed: int = 0):
        self.settings = settings
        self.per_task = {task: settings.for_task(task) for task in settings.overrides}
        self.tasks = set(settings.tasks) if settings.tasks else None
        self.momentum, self.momentum_warm = settings.teacher_momentum, \
            settings.teacher_momentum_warm
        self.warm_updates = 0
        self.updates = 0
        self.calls: dict[str, int] = {}  # batches seen per task (for adversarial_every)
        self.generator = torch.Generator().manual_seed(seed)  # adversarial_share's rows
        self.teacher = None
        self._pending_teacher_state = None

    def start(self, total_updates: int) -> None:
        self.warm_updates = int(self.settings.teacher_warm_fraction * total_updates)

    # ------------------------------------------------------------------ the loss terms
    def __call__(self, model, task, batch, logits):
        if self.tasks is not None and task.name not in self.tasks:
            return logits.new_zeros(())
        s = self.per_task.get(task.name, self.settings)
        seen = self.calls.get(task.name, 0)
        self.calls[task.name] = seen + 1
        total = logits.new_zeros(())
        if s.adversarial_weight and seen % s.adversarial_every == 0:
            total = total + s.adversarial_weight * self.adversarial_loss(model, task, batch,
                                                                         logits, s)
        if s.proximal_weight:
            total = total + s.proximal_weight * self.proximal_loss(model, task, batch, logits, s)
        return total

    def adversarial_loss(self, model, task, batch, logits, s: SmartConfig):
        """ℓs(f(x + δ), f(x)) with δ from K projected ascent steps (Eq. 3), in fp32; on a
        seeded share of the batch when adversarial_share < 1 (its mean estimates the
        batch's without bias)."""
        if s.adversarial_share < 1:
            count = max(1, round(s.adversarial_share * batch.size))
            rows = torch.randperm(batch.size, generator=self.generator)[:count].sort().values
            batch, logits = batch.select(rows.to(logits.device)), logits[rows.to(logits.device)]
        device_type = logits.device.type
        perturbed = s.noise_std > 0 or s.adversarial_steps > 0
        # δ needs fp32; without one (R-Drop: only the dropout masks differ) the passes keep
        # the step's precision and its logits are the target
        reduced = perturbed and _reduced_precision(device_type)
        with full_precision(device_type) if perturbed else contextlib.nullcontext():
            embeds = model.embed(batch)
            if reduced:  # the step's logits carry rounding noise far above the effect of δ
                with torch.set_grad_enabled(not s.detach_target):
                    target = model(batch, embeds).float()
            else:
                target = logits
            if s.detach_target:
                target = target.detach()
            return self._adversarial(model, task, batch, embeds, target, s)

    def _adversarial(self, model, task, batch, embeds, target, s: SmartConfig):
        masks = [seg["attention_mask"].unsqueeze(-1).to(e.dtype)  # (batch, seq, 1)
                 for seg, e in zip(batch.segments, embeds)]
        deltas = [(torch.randn_like(e) * s.noise_std if s.noise_std else torch.zeros_like(e))
                  * m for e, m in zip(embeds, masks)]
        was_training = model.training
        if not s.adversarial_dropout:
            model.eval()
        try:
            for _ in range(s.adversarial_steps):
                deltas = [d.requires_grad_() for d in deltas]
                with _frozen(model):  # the inner pass needs ∂/∂δ only: save no weight inputs
                    inner = task.divergence(
                        model(batch, [e.detach() + d for e, d in zip(embeds, deltas)]).float(),
                        target.detach(), s.divergence("inner", task))
                    grads = torch.autograd.grad(inner, deltas)
                deltas = [ascent_step(d.detach(), g, s.step_size, s.epsilon, s.norm) * m
                          for d, g, m in zip(deltas, grads, masks)]
            adversarial = model(batch, [e + d for e, d in zip(embeds, deltas)]).float()
        finally:
            model.train(was_training)
        return task.divergence(adversarial, target, s.divergence("final", task))

    def proximal_loss(self, model, task, batch, logits, s: SmartConfig):
        """ℓs(f(x; θ), f(x; θ̃)): the Bregman proximal term against the momentum teacher."""
        if self.teacher is None:
            self._make_teacher(model)
        with torch.no_grad():
            teacher_logits = self.teacher(batch).float()
        return task.divergence(logits, teacher_logits, s.divergence("proximal", task))

    # ------------------------------------------------------------------ the teacher
    def _make_teacher(self, model):
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        if self._pending_teacher_state is not None:
            self.teacher.load_state_dict(self._pending_teacher_state)
            self._pending_teacher_state = None

    def teacher_momentum(self) -> float:
        return self.momentum_warm if self.updates < self.warm_updates else self.momentum

    @torch.no_grad()
    def after_step(self, model):
        """θ̃ ← (1−β)θ + βθ̃ (β = 0.99 in the first 10% of updates, then 0.999)."""
        beta = self.teacher_momentum()
        self.updates += 1
        if self.teacher is None:
            return
        for teacher_p, p in zip(self.teacher.parameters(), model.parameters()):
            teacher_p.lerp_(p.detach(), 1.0 - beta)

    def state_dict(self):
        teacher = self.teacher.state_dict() if self.teacher is not None else \
            self._pending_teacher_state
        return {"updates": self.updates, "teacher": teacher, "calls": dict(self.calls),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.updates = state["updates"]
        self.calls = dict(state.get("calls", {}))  # absent in checkpoints before the variants
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if state["teacher"] is not None:
            if self.teacher is None:
                self._pending_teacher_state = state["teacher"]
            else:
                self.teacher.load_state_dict(state["teacher"])
