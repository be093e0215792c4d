"""SMART: the ascent step, the ε-ball, the divergences, the teacher, and the zero weights."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from minbert import BertModel
from minbert.config import SmartConfig
from minbert.build import checked_config
from minbert.data import EncodedTask, Examples
from minbert.multitask import MultiTaskModel
from minbert.regularizers.smart import Smart, ascent_step
from minbert.tasks import build_task
from minbert.tokenizer import Tokenizer

from helpers import QUESTIONS, SIMILAR


def _started(smart, total_updates):
    """A SMART regulariser as a run of `total_updates` updates starts it."""
    smart.start(total_updates)
    return smart


@pytest.fixture
def setup(tiny_checkpoint):
    torch.manual_seed(0)
    tasks = {name: build_task(name, {}) for name in ("sst", "quora", "sts")}
    model = MultiTaskModel(BertModel.from_pretrained(tiny_checkpoint), tasks, "bi", "mean")
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    pairs = Examples([str(i) for i in range(6)], [[a for a, _, _ in SIMILAR],
                                                  [b for _, b, _ in SIMILAR]],
                     np.array([y for _, _, y in SIMILAR]))
    batch = EncodedTask("sts", pairs, tokenizer, "bi").batch(np.arange(6))
    questions = Examples([str(i) for i in range(6)], [[a for a, _, _ in QUESTIONS],
                                                      [b for _, b, _ in QUESTIONS]],
                         np.array([float(y) for _, _, y in QUESTIONS]))
    quora_batch = EncodedTask("quora", questions, tokenizer, "bi").batch(
        np.arange(6))
    return model.train(), tasks, batch, quora_batch


def test_one_ascent_step_increases_the_divergence(setup):
    model, tasks, _, batch = setup
    model.eval()  # no dropout: compare like with like
    task = tasks["quora"]
    with torch.no_grad():
        target = model(batch)
    embeds = [e.detach() for e in model.embed(batch)]
    torch.manual_seed(1)
    delta = [torch.randn_like(e) * 1e-3 for e in embeds]
    for d in delta:
        d.requires_grad_()
    before = task.divergence(model(batch, [e + d for e, d in zip(embeds, delta)]), target, "kl")
    grads = torch.autograd.grad(before, delta)
    stepped = [ascent_step(d.detach(), g, 1e-2, 1e-2, "inf") for d, g in zip(delta, grads)]
    with torch.no_grad():
        after = task.divergence(model(batch, [e + d for e, d in zip(embeds, stepped)]),
                                target, "kl")
    assert after > before * 2


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_the_perturbation_stays_inside_the_epsilon_ball(norm):
    torch.manual_seed(0)
    delta = torch.randn(4, 7, 16) * 1e-5
    for _ in range(5):
        delta = ascent_step(delta, torch.randn(4, 7, 16), step_size=1e-3, epsilon=1e-5,
                            norm=norm)
    size = delta.abs().amax(-1) if norm == "inf" else delta.norm(dim=-1)
    assert size.max() <= 1e-5 * (1 + 1e-6)
    assert size.min() > 0.5e-5  # the step is much larger than ε, so δ reaches the boundary


def test_categorical_divergences_equal_their_formulas():
    task = build_task("sst", {})
    p_logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 0.0]])
    q_logits = torch.tensor([[0.0, 0.3, 0.2, -0.5, 1.0]])
    p, q = p_logits.softmax(-1)[0].tolist(), q_logits.softmax(-1)[0].tolist()
    kl_qp = sum(a * math.log(a / b) for a, b in zip(q, p))
    kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q))
    # divergence(logits, target): KL(target ‖ logits)
    assert task.divergence(p_logits, q_logits, "kl").item() == pytest.approx(kl_qp, rel=1e-5)
    assert task.divergence(p_logits, q_logits, "sym-kl").item() == pytest.approx(
        kl_qp + kl_pq, rel=1e-5)
    assert task.divergence(q_logits, p_logits, "sym-kl").item() == pytest.approx(
        task.divergence(p_logits, q_logits, "sym-kl").item(), rel=1e-6)
    assert task.divergence(p_logits, q_logits, "squared").item() == pytest.approx(
        sum((a - b) ** 2 for a, b in zip(p, q)), rel=1e-5)
    for kind in ("kl", "sym-kl", "squared"):
        assert task.divergence(p_logits, p_logits, kind).item() == pytest.approx(0, abs=1e-7)


def test_binary_tasks_use_the_bernoulli_form():
    task = build_task("quora", {})
    a, b = torch.tensor([[0.7]]), torch.tensor([[-1.2]])
    p, q = torch.sigmoid(a).item(), torch.sigmoid(b).item()
    kl_qp = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    kl_pq = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert task.divergence(a, b, "kl").item() == pytest.approx(kl_qp, rel=1e-5)
    assert task.divergence(a, b, "sym-kl").item() == pytest.approx(kl_qp + kl_pq, rel=1e-5)
    assert task.divergence(a, b, "squared").item() == pytest.approx((p - q) ** 2, rel=1e-5)


def test_regression_squared_divergence_is_on_the_unit_scale():
    task = build_task("sts", {})
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [2.0]])
    expected = ((0.5 - torch.sigmoid(torch.tensor(1.0)).item()) ** 2 + 0) / 2
    assert task.divergence(a, b, "squared").item() == pytest.approx(expected, rel=1e-6)


def test_teacher_follows_the_momentum_rule(setup):
    model, tasks, batch, _ = setup
    smart = _started(Smart(SmartConfig(adversarial_weight=0.0)), 100)
    logits = model(batch)
    smart(model, tasks["sts"], batch, logits)  # makes the teacher: a copy of θ0
    teacher_before = [p.clone() for p in smart.teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    smart.after_step(model)  # within the first 10%: β = 0.99
    for old, new, p in zip(teacher_before, smart.teacher.parameters(), model.parameters()):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * p)
    smart.updates = 50
    assert smart.teacher_momentum() == 0.999


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_zero_weights_give_exactly_the_plain_loss_and_gradient(setup):
    model, tasks, batch, _ = setup
    task = tasks["sts"]
    smart = Smart(SmartConfig(adversarial_weight=0.0, proximal_weight=0.0))
    torch.manual_seed(5)
    plain_logits = model(batch)
    plain = task.loss(plain_logits, batch.labels)
    plain_grads = _grads(model, plain)
    torch.manual_seed(5)
    logits = model(batch)
    total = task.loss(logits, batch.labels) + smart(model, task, batch, logits)
    assert total.item() == plain.item()
    for a, b in zip(plain_grads, _grads(model, total)):
        assert torch.equal(a, b)


def test_adversarial_term_is_positive_and_reaches_the_word_embeddings(setup):
    model, tasks, batch, quora_batch = setup
    smart = Smart(SmartConfig(proximal_weight=0.0, noise_std=1e-3, epsilon=1e-2,
                                step_size=1e-2))
    for task, b in ((tasks["sts"], batch), (tasks["quora"], quora_batch)):
        model.zero_grad()
        term = smart(model, task, b, model(b))
        assert term.item() > 0
        term.backward()
        assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_dropout_off_option_makes_the_adversarial_passes_deterministic(setup):
    model, tasks, batch, _ = setup
    smart = Smart(SmartConfig(proximal_weight=0.0, noise_std=0.0, adversarial_dropout=False))
    with torch.no_grad():
        model.eval()
        clean = model(batch)
        model.train()
    # δ starts at 0 and the ascent is skipped: f(x + 0) with dropout off equals f(x) in eval
    smart.settings.adversarial_steps = 0
    assert smart(model, tasks["sts"], batch, clean).item() == pytest.approx(0.0, abs=1e-12)
    assert model.training


def test_teacher_state_survives_a_resume(setup):
    model, tasks, batch, _ = setup
    smart = _started(Smart(SmartConfig(adversarial_weight=0.0)), 10)
    smart(model, tasks["sts"], batch, model(batch))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    smart.after_step(model)
    state = smart.state_dict()
    restored = _started(Smart(SmartConfig(adversarial_weight=0.0)), 10)
    restored.load_state_dict(state)
    restored(model, tasks["sts"], batch, model(batch))  # builds the teacher, then loads it
    assert restored.updates == 1
    for a, b in zip(smart.teacher.state_dict().values(), restored.teacher.state_dict().values()):
        assert torch.equal(a, b)


def test_smart_is_built_from_config_with_per_task_overrides():
    config = SmartConfig(enabled=True, inner_divergence="kl", final_divergence="sym-kl",
                         overrides={"sts": {"adversarial_weight": 5.0}})
    smart = _started(Smart(config), 10)
    assert smart.per_task["sts"].adversarial_weight == 5.0
    assert smart.per_task["sts"].inner_divergence == "kl"
    assert smart.settings.divergence("final", build_task("sts", {})) == "sym-kl"
    assert SmartConfig().divergence("final", build_task("sts", {})) == "squared"
    with pytest.raises(ValueError, match="smart.overrides.sts"):
        checked_config({"smart": {"overrides": {"sts": {"lambda": 1}}}})


def test_adversarial_term_is_computed_in_full_precision(setup):
    """δ (ε = 1e-5) is below bf16 resolution: the term must not measure rounding noise."""
    model, tasks, _, batch = setup
    model.eval()  # no dropout: the only difference between the runs is the precision
    task = tasks["quora"]
    smart = Smart(SmartConfig(proximal_weight=0.0))

    def term(bf16):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return smart(model, task, batch, model(batch)).item()

    exact = term(bf16=False)
    assert exact > 0
    assert term(bf16=True) == pytest.approx(exact, rel=1e-4)
    # what the term would be if the passes kept bf16: dominated by rounding, not by δ
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
        noisy = smart._adversarial(model, task, batch, model.embed(batch), logits.detach().float(),
                                   smart.settings).item()
    assert noisy != pytest.approx(exact, rel=0.3)


def test_adversarial_passes_use_ieee_matmuls_and_restore_the_setting(setup, monkeypatch):
    model, tasks, _, batch = setup
    seen = []
    forward = model.forward

    def recording(*args, **kwargs):
        seen.append((torch.get_float32_matmul_precision(), torch.is_autocast_enabled("cpu")))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 matmuls on CPUs with AMX
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch)
            Smart(SmartConfig(proximal_weight=0.0))(model, tasks["quora"], batch, logits)
            assert torch.get_float32_matmul_precision() == "medium"
            assert torch.is_autocast_enabled("cpu")
    finally:
        torch.set_float32_matmul_precision(previous)
    # the step's own forward, then the fp32 target, the inner pass and the final pass
    assert seen == [("medium", True)] + [("highest", False)] * 3


def test_inner_pass_leaves_frozen_and_trainable_parameters_as_they_were(setup):
    model, tasks, batch, _ = setup
    model.encoder.requires_grad_(False)  # as in the last-linear-layer setting
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    term = Smart(SmartConfig(proximal_weight=0.0))(model, tasks["sts"], batch, model(batch))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert term.requires_grad  # the final term still reaches the trainable head


# ---------------------------------------------------------------------- cheaper variants
VARIANT = dict(proximal_weight=0.0, noise_std=1e-3, epsilon=1e-2, step_size=1e-2,
               adversarial_dropout=False)


def test_a_share_of_the_batch_is_the_term_on_those_rows(setup):
    """adversarial_share = 0.5: the term equals the full definition on the seeded rows."""
    model, tasks, _, batch = setup
    model.eval()
    shared = Smart(SmartConfig(adversarial_share=0.5, **VARIANT), seed=3)
    rows = torch.randperm(batch.size, generator=torch.Generator().manual_seed(3))[:3].sort()
    torch.manual_seed(1)
    term = shared(model, tasks["quora"], batch, model(batch))
    subset = batch.select(rows.values)
    torch.manual_seed(1)  # the same noise δ₀
    expected = Smart(SmartConfig(**VARIANT))(model, tasks["quora"], subset, model(subset))
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0
    assert subset.size == 3 and subset.segments[0]["input_ids"].shape[1] <= \
        batch.segments[0]["input_ids"].shape[1]


def test_every_kth_batch_carries_the_term(setup):
    model, tasks, _, batch = setup
    smart = Smart(SmartConfig(adversarial_every=3, **VARIANT))
    terms = [smart(model, tasks["quora"], batch, model(batch)).item() for _ in range(7)]
    assert [t > 0 for t in terms] == [True, False, False, True, False, False, True]
    restored = Smart(SmartConfig(adversarial_every=3, **VARIANT))
    restored.load_state_dict(smart.state_dict())  # the count survives a resume
    assert restored(model, tasks["quora"], batch, model(batch)).item() == 0


def test_no_ascent_step_is_r3f_noise(setup):
    """adversarial_steps = 0: ℓs(f(x + ε₀), f(x)) with ε₀ ~ N(0, σ²) on the tokens."""
    model, tasks, _, batch = setup
    model.eval()
    task = tasks["quora"]
    logits = model(batch)
    torch.manual_seed(5)
    term = Smart(SmartConfig(adversarial_steps=0, **VARIANT))(model, task, batch, logits)
    torch.manual_seed(5)
    embeds = model.embed(batch)
    noisy = [e + torch.randn_like(e) * 1e-3 * s["attention_mask"].unsqueeze(-1)
             for e, s in zip(embeds, batch.segments)]
    expected = task.divergence(model(batch, noisy), logits.detach(), "sym-kl")
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0


def test_r_drop_setting_is_two_dropout_passes_with_gradient_through_both(setup):
    """steps 0, no noise, dropout on, target not detached: sym-KL(f₁(x), f₂(x)) as R-Drop."""
    model, tasks, _, batch = setup
    model.train()
    task = tasks["quora"]
    settings = SmartConfig(proximal_weight=0.0, adversarial_steps=0, noise_std=0.0,
                           detach_target=False)
    torch.manual_seed(7)
    first = model(batch)
    term = Smart(settings)(model, task, batch, first)
    torch.manual_seed(7)
    expected = task.divergence(model(batch), model(batch), "sym-kl")  # the same two masks
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0

    def gradient(detach):
        model.zero_grad()
        torch.manual_seed(7)
        logits = model(batch)
        Smart(replace(settings, detach_target=detach))(model, task, batch, logits).backward()
        return model.heads["quora"].out.weight.grad.clone()
    assert not torch.allclose(gradient(True), gradient(False))  # the clean side learns too
