"""Levers for one multi-task model: the anchor regulariser (decay towards the starting
weights), a cosine head's own projection and a task's own top encoder layers."""
import pytest
import torch
from torch import nn

from minbert.build import checked_config
from minbert.config import ConfigKeyError
from minbert.regularizers.anchor import Anchor
from minbert.training import train

from helpers import tiny_config_values, write_task_files


def _values(tmp_path, checkpoint, run="run", **train):
    """A tiny run's config over task files written under tmp_path/data."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return tiny_config_values(write_task_files(tmp_path / "data"), checkpoint, tmp_path / run,
                              **train)


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
    values = _values(tmp_path, tiny_checkpoint, "run")
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


def _trained_and_exported(tmp_path, checkpoint, **sts):
    """A tiny run with a bi-encoded STS (and `sts`'s options) trained in tmp_path/run and
    exported to tmp_path/out, whose STS predictions are checked to equal the run's; the
    loaded run."""
    import numpy as np

    import minbert
    from minbert import cli
    from minbert.loading import load_run
    values = _values(tmp_path, checkpoint, "run", epochs=1, lr=1e-2, head_lr=5e-2)
    values["tasks"]["sts"].update(pair_encoding="bi", **sts)
    train(checked_config(values))
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    pairs = [("a dog runs .", "a cat runs ."), ("a man plays guitar .", "the cat sits .")]
    ours = minbert.load(tmp_path / "run", precision="fp32").predict("sts", pairs)
    exported = minbert.load(tmp_path / "out", precision="fp32").predict("sts", pairs)
    np.testing.assert_allclose(exported.values, ours.values, rtol=1e-6)
    return load_run(tmp_path / "run")


@pytest.mark.slow
def test_a_projected_cosine_head_survives_the_full_export_and_is_refused_alone(
        tmp_path, tiny_checkpoint, capsys):
    from minbert import cli
    run = _trained_and_exported(tmp_path, tiny_checkpoint, projection=True)
    weight = run.model.heads["sts"].projection.weight.detach()
    assert not torch.equal(weight, torch.eye(weight.shape[0]))  # it trained
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "st"), "--task",
                     "sts"]) == 2
    assert "tasks.sts.projection" in capsys.readouterr().err


def _batch(tokenizer, task, texts):
    import numpy as np

    from minbert.data import Batch
    segments = [tokenizer(list(column)) for column in zip(*texts)]
    return Batch(task, segments, None, np.arange(len(texts)))


def test_own_layers_start_as_the_shared_top_and_then_move_only_their_task(
        tmp_path, tiny_checkpoint):
    from minbert.build import build_plan
    from minbert.loading import build_model
    from minbert.model import BertModel
    values = _values(tmp_path, tiny_checkpoint, "run")
    values["tasks"]["sts"]["pair_encoding"] = "bi"
    plain = build_plan(checked_config(values))
    values["tasks"]["sts"]["own_layers"] = 1
    own = build_plan(checked_config(values))
    torch.manual_seed(0)
    a, tokenizer = build_model(plain.config, plain.tasks)
    b, _ = build_model(own.config, own.tasks)
    b.load_state_dict(a.state_dict(), strict=False)  # the same heads; the encoder already is
    a.eval(), b.eval()
    pairs = [("a dog runs .", "a cat runs ."), ("a man plays guitar .", "the cat sits .")]
    sts, sst = _batch(tokenizer, "sts", pairs), _batch(tokenizer, "sst", [("a dog .",)])
    assert list(b.task_layers) == ["sts"] and len(b.task_layers["sts"]) == 1
    assert torch.equal(b(sts), a(sts)) and torch.equal(b(sst), a(sst))
    with torch.no_grad():
        b.task_layers["sts"][0].output.dense.weight.add_(0.1)
    assert not torch.equal(b(sts), a(sts)) and torch.equal(b(sst), a(sst))
    with torch.no_grad():
        b.encoder.encoder.layer[-1].output.dense.weight.add_(0.1)  # the shared top
    assert not torch.equal(b(sst), a(sst))
    # the task's encoder, written as a standard BERT, is what the task reads
    alone = BertModel(b.encoder.config).eval()
    alone.load_state_dict(b.encoder_state("sts"))
    segment = tokenizer(["a dog runs ."])
    with torch.no_grad():
        _, pooled, states = alone(**segment, output_hidden_states=True)
        expected = b.pool("sts", states, pooled, segment["attention_mask"])
        got = b.represent(segment, b.encoder.word_embeddings(segment["input_ids"]), "sts")
    torch.testing.assert_close(got, expected)
    from minbert.optim import param_groups
    lrs = {id(p): group["lr"] for group in param_groups(b, 1.0, layer_decay=0.5)
           for p in group["params"]}
    assert lrs[id(b.task_layers["sts"][0].output.dense.weight)] == 1.0  # the top layer's
    assert lrs[id(b.encoder.encoder.layer[0].output.dense.weight)] == 0.5
    values["tasks"]["sts"]["own_layers"] = 3  # the tiny BERT has 2
    with pytest.raises(ValueError, match="tasks.sts.own_layers: 3, but the encoder has 2"):
        build_model(*(lambda p: (p.config, p.tasks))(build_plan(checked_config(values))))
    values["tasks"]["sts"]["own_layers"] = -1
    with pytest.raises((ValueError, ConfigKeyError), match="tasks.sts.own_layers: a whole "
                                                           "number ≥ 0"):
        checked_config(values)


@pytest.mark.slow
def test_own_layers_train_and_survive_the_full_export_and_the_tasks_export(
        tmp_path, tiny_checkpoint, capsys):
    from minbert import cli
    from minbert.model import BertModel
    run = _trained_and_exported(tmp_path, tiny_checkpoint, own_layers=1)
    own, shared = run.model.task_layers["sts"][0], run.model.encoder.encoder.layer[-1]
    assert not torch.equal(own.output.dense.weight, shared.output.dense.weight)  # both trained
    assert "sts reads its own copy of the top 1 layer(s)" in (tmp_path / "out" /
                                                              "README.md").read_text()
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "st"), "--task",
                     "sts"]) == 0  # the task's own layers in the standard BERT
    alone = BertModel.from_pretrained(tmp_path / "st", verbose=False)
    torch.testing.assert_close(alone.state_dict(), run.model.encoder_state("sts"))
    capsys.readouterr()
    pytest.importorskip("onnxscript")
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "onnx"), "--onnx"]) == 2
    assert "tasks.sts.own_layers" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_a_runs_own_layers_start_from_the_layers_its_source_task_read(tmp_path, tiny_checkpoint):
    """model.init_from (and --finetune): a task with its own layers starts from the top
    layers as the source run's task read them (its own, or the shared ones)."""
    from minbert.build import build_plan
    from minbert.loading import build_model, load_run, start_from_run
    values = _values(tmp_path, tiny_checkpoint, "source", epochs=1, lr=1e-2)
    train(checked_config(values))
    source = load_run(tmp_path / "source").model
    values["tasks"]["sst"]["own_layers"] = 1
    plan = build_plan(checked_config(values))
    model, _ = build_model(plan.config, plan.tasks)
    assert not torch.equal(model.task_layers["sst"][0].output.dense.weight,
                           source.encoder.encoder.layer[-1].output.dense.weight)
    start_from_run(model, tmp_path / "source", seed=0)
    torch.testing.assert_close(model.task_layers["sst"][0].state_dict(),
                               source.encoder.encoder.layer[-1].state_dict())


def test_own_layers_change_nothing_for_a_task_trained_alone(tmp_path, tiny_checkpoint):
    """A specialist of a recipe with own_layers (configs/lean-distill.toml under --distill)
    trains the same model as without them: one task has no layer to share, and the unused
    shared copy takes no step."""
    from minbert.loading import load_run
    metrics, models = [], []
    for own in (0, 1):
        values = _values(tmp_path, tiny_checkpoint, f"run{own}", epochs=1, lr=1e-2)
        values["data"]["tasks"] = ["sts"]
        values["tasks"]["sts"].update(pair_encoding="bi", own_layers=own)
        metrics.append(train(checked_config(values)))
        models.append(load_run(tmp_path / f"run{own}").model)
    assert metrics[0] == metrics[1]
    for key, value in models[0].encoder_state("sts").items():
        assert torch.equal(models[1].encoder_state("sts")[key], value), key


def _keep_finished_values(tmp_path, checkpoint, run, **train):
    values = _values(tmp_path, checkpoint, run, epochs=2, lr=1e-2, keep_finished=True, **train)
    values["tasks"]["sst"]["epochs"] = values["tasks"]["quora"]["epochs"] = 1
    values["tasks"]["sts"].update(pair_encoding="bi", own_layers=1)
    return values


def test_a_task_past_its_epochs_keeps_its_weights_while_another_trains_on(
        tmp_path, tiny_checkpoint):
    """train.keep_finished: in the second epoch STS trains alone and moves only its own top
    layer; what SST and Quora read stays as the first epoch left it, also across a resume
    inside that epoch. Without the option STS's epoch moves the shared encoder."""
    from minbert.runs import load_state
    after_first = {}

    def keep(run):
        def on_epoch(epoch, metrics):
            if epoch == 1:
                after_first[run] = load_state(tmp_path / run / "checkpoint.pt")["model"]
        return on_epoch

    train(checked_config(_keep_finished_values(tmp_path, tiny_checkpoint, "whole")),
          on_epoch=keep("whole"))
    interrupted = _keep_finished_values(tmp_path, tiny_checkpoint, "resumed", max_steps=3,
                                        checkpoint_every=1)
    train(checked_config(interrupted), on_epoch=keep("resumed"))
    stopped = load_state(tmp_path / "resumed" / "checkpoint.pt")
    assert stopped["epoch"] == 1 and stopped["step"] > 0  # inside the second epoch
    interrupted["train"]["max_steps"] = 0
    train(checked_config(interrupted))
    plain = _keep_finished_values(tmp_path, tiny_checkpoint, "plain")
    plain["train"]["keep_finished"] = False
    train(checked_config(plain), on_epoch=keep("plain"))
    final = {run: load_state(tmp_path / run / "checkpoint.pt")["model"]
             for run in ("whole", "resumed", "plain")}
    for run in ("whole", "resumed"):
        for key, value in after_first[run].items():
            moved = not torch.equal(final[run][key], value)
            assert moved == key.startswith(("task_layers.sts.", "heads.sts.")), (run, key)
    for key, value in final["whole"].items():  # the resumed run is the uninterrupted one
        assert torch.equal(final["resumed"][key], value), key
    key = "encoder.encoder.layer.0.output.dense.weight"
    assert not torch.equal(final["plain"][key], after_first["plain"][key])
