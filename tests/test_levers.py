"""Levers for one multi-task model: the anchor regulariser (decay towards the starting
weights) and a cosine head's own projection."""
import pytest
import torch
from torch import nn

from minbert.build import checked_config
from minbert.config import ConfigKeyError
from minbert.regularizers.anchor import Anchor
from minbert.training import train

from helpers import tiny_config_values, write_task_files


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3)
        self.heads = nn.Linear(3, 1)


def test_the_pull_is_lr_times_weight_towards_the_first_steps_weights_and_spares_the_heads():
    torch.manual_seed(0)
    model = _Model()
    optimizer = torch.optim.SGD([{"params": model.encoder.parameters(), "lr": 0.1},
                                 {"params": model.heads.parameters(), "lr": 0.1}])
    anchor = Anchor(weight=5.0)  # lerp 0.1 · 5 = ½ of the way back each update
    start = [p.detach().clone() for p in model.encoder.parameters()]
    anchor.before_step(model, optimizer)  # captures θ₀; nothing to pull yet
    assert all(torch.equal(p, a) for p, a in zip(model.encoder.parameters(), start))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    heads = [p.detach().clone() for p in model.heads.parameters()]
    anchor.before_step(model, optimizer)
    for p, a in zip(model.encoder.parameters(), start):
        torch.testing.assert_close(p, a + 0.5)
    assert all(torch.equal(p, h) for p, h in zip(model.heads.parameters(), heads))

    optimizer.param_groups[0]["lr"] = 0.0  # the schedule at zero: no pull
    anchor.before_step(model, optimizer)
    for p, a in zip(model.encoder.parameters(), start):
        torch.testing.assert_close(p, a + 0.5)

    restored = Anchor(weight=5.0)  # a resumed run pulls towards the same θ₀
    restored.load_state_dict(anchor.state_dict())
    optimizer.param_groups[0]["lr"] = 0.1
    restored.before_step(model, optimizer)
    for p, a in zip(model.encoder.parameters(), start):
        torch.testing.assert_close(p, a + 0.25)


def test_a_bad_weight_is_refused_by_name():
    with pytest.raises((ValueError, ConfigKeyError), match="regularizers.anchor.weight"):
        checked_config({"regularizers": {"anchor": {"weight": -1}}})


@pytest.mark.slow
def test_a_full_pull_keeps_the_encoder_one_update_from_where_it_started(
        tmp_path, tiny_checkpoint):
    """lr · weight ≥ 1 puts the encoder back at θ₀ before every update: after training it
    is one AdamW step (≤ lr per weight, plus decay) from θ₀, while a run without the
    anchor moves it further; the checkpoint keeps θ₀ for a resume."""
    (tmp_path / "data").mkdir()
    data = write_task_files(tmp_path / "data")

    def encoder(run):
        state = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
        return state, {k: v for k, v in state["model"].items() if k.startswith("encoder.")}

    plain = tiny_config_values(data, tiny_checkpoint, tmp_path / "plain", epochs=2, lr=1e-2)
    anchored = tiny_config_values(data, tiny_checkpoint, tmp_path / "anchored", epochs=2,
                                  lr=1e-2)
    anchored["regularizers"] = {"anchor": {"weight": 1e4}}
    train(checked_config(plain))
    train(checked_config(anchored))
    state, weights = encoder("anchored")
    start = state["regularizers"][0]["anchors"]
    assert len(start) == len(weights)
    moved = max((w - a).abs().max().item() for w, a in zip(weights.values(), start))
    _, plain_weights = encoder("plain")
    plain_moved = max((w - a).abs().max().item() for w, a in zip(plain_weights.values(), start))
    assert 0 < moved <= 1e-2 * 1.05 < plain_moved


def test_a_cosine_heads_projection_starts_as_the_identity_and_is_refused_elsewhere(
        tmp_path, tiny_checkpoint):
    from minbert.build import build_plan
    from minbert.loading import build_model
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run")
    values["tasks"]["sts"]["pair_encoding"] = "bi"
    plain = build_plan(checked_config(values))
    values["tasks"]["sts"]["projection"] = True
    projected = build_plan(checked_config(values))
    torch.manual_seed(0)
    a, _ = build_model(plain.config, plain.tasks)
    b, _ = build_model(projected.config, projected.tasks)
    b.load_state_dict(a.state_dict(), strict=False)  # the same encoder and affine
    u, v = torch.randn(4, 32), torch.randn(4, 32)
    assert torch.equal(b.heads["sts"](u, v), a.heads["sts"](u, v))
    with torch.no_grad():
        b.heads["sts"].projection.weight[0, 1] = 1.0
    assert not torch.equal(b.heads["sts"](u, v), a.heads["sts"](u, v))
    values["tasks"]["quora"]["projection"] = True  # cross-encoded: no cosine to project
    bad = build_plan(checked_config(values))
    with pytest.raises(ValueError, match="tasks.quora.projection: only a pair scored by "
                                         "cosine has one; quora is cross-encoded"):
        build_model(bad.config, bad.tasks)
    values["tasks"]["quora"]["projection"] = "yes"
    with pytest.raises((ValueError, ConfigKeyError), match="tasks.quora.projection: true or "
                                                           "false"):
        checked_config(values)


@pytest.mark.slow
def test_a_projected_cosine_head_survives_the_full_export_and_is_refused_alone(
        tmp_path, tiny_checkpoint, capsys):
    import numpy as np

    import minbert
    from minbert import cli
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run", epochs=1, lr=1e-2, head_lr=5e-2)
    values["tasks"]["sts"].update(pair_encoding="bi", projection=True)
    train(checked_config(values))
    from minbert.loading import load_run
    weight = load_run(tmp_path / "run").model.heads["sts"].projection.weight.detach()
    assert not torch.equal(weight, torch.eye(weight.shape[0]))  # it trained
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    pairs = [("a dog runs .", "a cat runs ."), ("a man plays guitar .", "the cat sits .")]
    ours = minbert.load(tmp_path / "run", precision="fp32").predict("sts", pairs)
    exported = minbert.load(tmp_path / "out", precision="fp32").predict("sts", pairs)
    np.testing.assert_allclose(exported.values, ours.values, rtol=1e-6)
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "st"), "--task",
                     "sts"]) == 2
    assert "tasks.sts.projection" in capsys.readouterr().err
