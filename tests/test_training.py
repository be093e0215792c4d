"""The trainer end to end on a tiny model: it learns, it resumes exactly, the CLI works."""
import json
import math

import numpy as np
import pytest
import torch

from minbert import cli
from minbert.build import checked_config
from minbert.config import ConfigKeyError
from minbert.runs import RunError
from minbert.tokenizer import Tokenizer
from minbert.training import TrainingError, train

from helpers import tiny_config_values, weights_equal, write_task_files


@pytest.fixture
def task_dir(tmp_path):
    (tmp_path / "data").mkdir()
    return write_task_files(tmp_path / "data")


@pytest.mark.slow
@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_tiny_model_overfits_a_handful_of_examples_per_task(task_dir, tiny_checkpoint, tmp_path,
                                                            pair_encoding):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=40,
                                lr=2e-3, head_lr=5e-3, sampler="round-robin")
    values["model"].update(pair_encoding=pair_encoding, head_dropout=0.0)
    metrics = train(checked_config(values))
    assert metrics["sst"] == 1.0
    assert metrics["quora"] == 1.0
    assert metrics["sts"] > 0.9


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["round-robin", "temperature"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
        task_dir, tiny_checkpoint, tmp_path, sampler):
    common = dict(epochs=3, sampler=sampler, checkpoint_every=1)
    train(checked_config(tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "a", **common)))
    interrupted = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "b", max_steps=4,
                                     **common)
    assert train(checked_config(interrupted)) == {"stopped_at_update": 4}
    assert not weights_equal(_final_weights(tmp_path / "a"), _final_weights(tmp_path / "b"))
    train(checked_config(tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "b", **common)))
    assert weights_equal(_final_weights(tmp_path / "a"), _final_weights(tmp_path / "b"))

    def epochs(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [json.loads(x)["dev"] for x in lines if '"type": "epoch"' in x]
    assert epochs("a") == epochs("b")


def test_resuming_with_a_different_config_is_refused_by_key(task_dir, tiny_checkpoint, tmp_path):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", max_steps=1)
    train(checked_config(values))
    values["train"]["lr"] = 5e-4
    with pytest.raises(RunError, match=r"train.lr: 0.001 -> 0.0005"):
        train(checked_config(values))


def test_a_nan_loss_stops_with_a_clear_message(task_dir, tiny_checkpoint, tmp_path):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", lr=1e30,
                                clip_norm=0.0)
    with pytest.raises(TrainingError, match="loss is"):
        train(checked_config(values))


@pytest.mark.slow
def test_cli_trains_evaluates_and_predicts_on_a_slice_of_the_shared_data(
        data_dir, tiny_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", "configs/cross-encoding.toml", "--run-dir", str(run),
            f'model.checkpoint="{tiny_checkpoint}"', "train.epochs=1", "data.dev_limit=40",
            "tasks.sst.subsample=24", "tasks.quora.subsample=24", "tasks.sts.subsample=24",
            "data.batch_size=8"]
    assert cli.main(args) == 0
    assert "best dev metrics" in capsys.readouterr().out
    assert cli.main(["evaluate", str(run)]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("sst", "quora", "sts", "overall"))
    assert cli.main(["predict", str(run), "--splits", "test"]) == 0
    sst_test = (run / "leaderboard" / "sst-test-output.csv").read_text().splitlines()
    assert sst_test[0] == "id \t Predicted_Sentiment "
    assert len(sst_test) == 2211 and sst_test[1].split(" , ")[1].strip() in "01234"
    assert (run / "leaderboard" / "sts-test-output.csv").exists()
    assert "skip quora test" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("combiner,precision", [("pcgrad", "fp32"), ("cagrad", "fp32"),
                                                ("pcgrad", "bf16")])
def test_surgery_with_smart_trains_and_its_teacher_is_checkpointed(task_dir, tiny_checkpoint,
                                                                   tmp_path, combiner, precision):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=25,
                                lr=2e-3, head_lr=5e-3, combiner=combiner)
    values["model"].update(head_dropout=0.0)
    values["train"]["precision"] = precision  # bf16: autocast, SMART's passes stay fp32
    values["smart"] = {"enabled": True, "inner_divergence": "kl", "final_divergence": "sym-kl"}
    metrics = train(checked_config(values))
    assert metrics["overall"] > 0.9  # chance is about 0.45
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["regularizers"][0]["teacher"] is not None
    assert state["regularizers"][0]["updates"] == state["updates"]


def test_cheap_smart_settings_and_famo_train_through_the_trainer(task_dir, tiny_checkpoint,
                                                                 tmp_path):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=2,
                                combiner="famo")
    values["smart"] = {"enabled": True, "adversarial_share": 0.5, "adversarial_every": 2,
                       "overrides": {"sts": {"adversarial_steps": 0}}}
    metrics = train(checked_config(values))
    assert all(math.isfinite(v) for v in metrics.values())
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert sum(state["regularizers"][0]["calls"].values()) == 3 * state["updates"]
    assert state["combiner"]["xi"].shape == (3,) and state["combiner"]["xi"].abs().sum() > 0


@pytest.mark.slow
def test_a_task_declared_in_the_config_trains_without_code(task_dir, tiny_checkpoint, tmp_path):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=15,
                                lr=2e-3, head_lr=5e-3)
    values["tasks"] = {"polarity": {
        "kind": "classification", "num_classes": 5, "text_columns": ["sentence"],
        "label_column": "sentiment", "train_files": ["sst-train.csv"],
        "dev_file": "sst-dev.csv"}}
    values["data"]["tasks"] = ["polarity"]
    metrics = train(checked_config(values))
    assert set(metrics) == {"polarity", "overall"} and metrics["polarity"] == 1.0


def test_pair_encoding_can_be_chosen_per_task(tiny_checkpoint):
    from minbert import BertModel
    from minbert.multitask import ConcatPairHead, CosinePairHead, LinearHead, MultiTaskModel
    from minbert.tasks import build_task
    tasks = {"quora": build_task("quora", {}), "sts": build_task("sts", {"pair_encoding": "bi"}),
             "sst": build_task("sst", {})}
    model = MultiTaskModel(BertModel.from_pretrained(tiny_checkpoint), tasks, "cross")
    assert model.encodings == {"quora": "cross", "sts": "bi", "sst": "single"}
    assert isinstance(model.heads["quora"], LinearHead)
    assert isinstance(model.heads["sts"], CosinePairHead)
    tasks["quora"] = build_task("quora", {"pair_encoding": "bi"})
    model = MultiTaskModel(BertModel.from_pretrained(tiny_checkpoint), tasks, "cross")
    assert isinstance(model.heads["quora"], ConcatPairHead)
    with pytest.raises(ValueError, match="tasks.sts.pair_encoding: 'siamese'"):
        build_task("sts", {"pair_encoding": "siamese"})


def test_a_pair_encoded_both_ways_sums_the_cross_and_the_bi_encoders_logits(tiny_checkpoint):
    from minbert import BertModel
    from minbert.data import EncodedTask, Examples
    from minbert.multitask import BothPairHead, ConcatPairHead, CosinePairHead, MultiTaskModel
    from minbert.tasks import build_task
    tasks = {"sts": build_task("sts", {"pair_encoding": "both"}),
             "quora": build_task("quora", {"pair_encoding": "both"})}
    torch.manual_seed(0)
    model = MultiTaskModel(BertModel.from_pretrained(tiny_checkpoint), tasks, "cross").eval()
    assert model.encodings == {"sts": "both", "quora": "both"}
    assert isinstance(model.heads["sts"].bi, CosinePairHead)
    assert isinstance(model.heads["quora"].bi, ConcatPairHead)
    examples = Examples(["1", "2", "3"], [["a cat sat", "the dog", "a man plays"],
                                          ["the cat sat down", "a cat", "a man sings"]],
                        np.array([4.0, 1.0, 2.5]))
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    batch = EncodedTask("sts", examples, tokenizer, "both").batch(np.arange(3))
    with torch.no_grad():
        joint, u, v = (model.represent(s, e, "sts")
                        for s, e in zip(batch.segments, model.embed(batch)))
        head = model.heads["sts"]
        assert isinstance(head, BothPairHead)
        expected = head.cross(joint) + head.bi(u, v)
        torch.testing.assert_close(model(batch), expected)
        # each part moves the sum: neither is ignored
        assert not torch.allclose(expected, head.cross(joint))
        assert not torch.allclose(expected, head.bi(u, v))


def test_a_task_pools_its_own_way_and_can_concatenate_the_top_layers(tiny_checkpoint):
    from minbert import BertModel
    from minbert.data import EncodedTask, Examples
    from minbert.multitask import MultiTaskModel
    from minbert.tasks import build_task
    tasks = {"sst": build_task("sst", {"pool_layers": 2}),
             "sts": build_task("sts", {"pooling": "cls", "pool_layers": 2,
                                       "pair_encoding": "bi"}),
             "quora": build_task("quora", {})}
    encoder = BertModel.from_pretrained(tiny_checkpoint)
    model = MultiTaskModel(encoder, tasks, "cross", pooling="mean").eval()
    hidden = encoder.config.hidden_size
    assert model.poolings == {"sst": ("mean", 2), "sts": ("cls", 2), "quora": ("mean", 1)}
    assert model.heads["sst"].out.in_features == 2 * hidden
    assert model.heads["quora"].out.in_features == hidden
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    sentences = Examples(["1", "2"], [["a good film", "bad"]], np.array([4.0, 0.0]))
    segment = EncodedTask("sst", sentences, tokenizer, "single").batch(np.arange(2)).segments[0]
    with torch.no_grad():
        states = encoder(**segment, output_hidden_states=True)[2]
        embeds = encoder.word_embeddings(segment["input_ids"])
        mask = segment["attention_mask"].unsqueeze(-1).float()
        means = [(s * mask).sum(1) / mask.sum(1) for s in states]
        torch.testing.assert_close(model.represent(segment, embeds, "sst"),
                                   torch.cat(means[-2:], dim=-1))
        torch.testing.assert_close(model.represent(segment, embeds, "quora"), means[-1])
        torch.testing.assert_close(model.represent(segment, embeds, "sts"),
                                   torch.cat([s[:, 0] for s in states[-2:]], dim=-1))


@pytest.mark.parametrize("settings, model_pooling, message", [
    ({"pool_layers": 0}, "mean", "tasks.sst.pool_layers: a whole number ≥ 1, got 0"),
    ({"pool_layers": "2"}, "mean", "tasks.sst.pool_layers: a whole number ≥ 1, got '2'"),
    ({"pooling": "max"}, "mean", "tasks.sst.pooling: 'max' is not one of"),
    ({"pooling": "pooler", "pool_layers": 2}, "mean", "the pooler reads the last layer only"),
    ({"pool_layers": 2}, "pooler", "the pooler \\(model.pooling\\) reads the last layer"),
    ({"pool_layers": 99}, "mean", "tasks.sst.pool_layers: 99, but the encoder has"),
])
def test_a_pooling_that_cannot_work_is_refused_by_name(tiny_checkpoint, settings,
                                                       model_pooling, message):
    from minbert import BertModel
    from minbert.multitask import MultiTaskModel
    from minbert.tasks import build_task
    with pytest.raises(ValueError, match=message):
        task = build_task("sst", settings)
        MultiTaskModel(BertModel.from_pretrained(tiny_checkpoint), {"sst": task}, "cross",
                       pooling=model_pooling)


def test_layer_decay_gives_each_encoder_layer_its_learning_rate(task_dir, tiny_checkpoint,
                                                                tmp_path):
    from minbert.build import build_plan, encode_train
    from minbert.loading import build_model
    from minbert.training import Trainer
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", lr=1e-3,
                                head_lr=1e-2, layer_decay=0.5)
    plan = build_plan(checked_config(values))
    model, tokenizer = build_model(plan.config, plan.tasks)
    train_sets, _, _ = encode_train(plan.config, plan.tasks, tokenizer)
    trainer = Trainer(plan, model, train_sets, {})
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups
                for p in g["params"]}
    encoder = model.encoder  # 2 layers: embeddings 0.25 lr, layer 0 0.5, layer 1 and pooler 1
    assert lr_of[id(encoder.embeddings.word_embeddings.weight)] == pytest.approx(2.5e-4)
    assert lr_of[id(encoder.encoder.layer[0].attention.self.query.weight)] == pytest.approx(5e-4)
    assert lr_of[id(encoder.encoder.layer[1].output.dense.weight)] == pytest.approx(1e-3)
    assert lr_of[id(encoder.pooler.dense.weight)] == pytest.approx(1e-3)
    assert all(lr_of[id(p)] == pytest.approx(1e-2) for p in model.heads.parameters())
    assert decay_of[id(encoder.encoder.layer[0].output.LayerNorm.weight)] == 0.0
    assert len(lr_of) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_averaging_the_last_epochs_adds_their_mean_as_a_candidate(task_dir, tiny_checkpoint,
                                                                  tmp_path):
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "a", average_last=2)
    train(checked_config(values))
    records = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    average = [r for r in records if r["type"] == "average"]
    assert len(average) == 1 and average[0]["epochs"] == [1, 2]
    # the checkpoint's mean is the mean of epoch 1's and epoch 2's weights
    steps = next(r for r in records if r["type"] == "start")["steps_per_epoch"]
    values["run_dir"] = str(tmp_path / "b")
    values["train"]["max_steps"] = steps  # stops at the end of epoch 1's training
    train(checked_config(values))
    last = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    first = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key, mean in last["average"].items():
        assert torch.allclose(mean, (first["model"][key] + last["model"][key]) / 2, atol=1e-6)
    # best.pt holds whichever scored best: an epoch, or the mean
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    scores = [r["dev"]["overall"] for r in records if r["type"] in ("epoch", "average")]
    assert best["metrics"]["overall"] == max(scores)
    if average[0]["dev"]["overall"] > max(scores[:-1]):  # the mean beat every epoch
        assert best["averaged_epochs"] == [1, 2]
    else:
        assert "averaged_epochs" not in best
    with pytest.raises(Exception, match="train.average_last"):
        checked_config(tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "c",
                                        average_last=3))


@pytest.mark.parametrize("weight", [2.0, 0.0])
def test_a_tasks_loss_weight_scales_its_gradient(task_dir, tiny_checkpoint, tmp_path, weight):
    """tasks.X.loss_weight: the task's share of each step, a per-task budget of effort."""
    from minbert.build import build_plan, encode_train
    from minbert.loading import build_model
    from minbert.training import Trainer
    grads = []
    for loss_weight in (1.0, weight):
        values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / f"r{loss_weight}")
        values["tasks"]["sst"]["loss_weight"] = loss_weight
        plan = build_plan(checked_config(values))
        model, tokenizer = build_model(plan.config, plan.tasks)
        train_sets, _, _ = encode_train(plan.config, plan.tasks, tokenizer)
        trainer = Trainer(plan, model.eval(), train_sets, {})  # eval: no dropout, same maths
        window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
        trainer.train_step([("sst", [0, 1, 2, 3])], window)
        grads.append(model.heads["sst"].out.weight.grad.clone())
    torch.testing.assert_close(grads[1], weight * grads[0])
    with pytest.raises(ConfigKeyError, match="tasks.sst.loss_weight: a number ≥ 0"):
        checked_config({"tasks": {"sst": {"loss_weight": -1}}})


def _trainer(values):
    from minbert.build import build_plan, encode_train
    from minbert.loading import build_model
    from minbert.training import Trainer
    plan = build_plan(checked_config(values))
    model, tokenizer = build_model(plan.config, plan.tasks)
    train_sets, _, _ = encode_train(plan.config, plan.tasks, tokenizer)
    return Trainer(plan, model, train_sets, {})


def test_a_tasks_epochs_end_its_training_early_and_the_schedule_counts_it(task_dir,
                                                                         tiny_checkpoint,
                                                                         tmp_path):
    """tasks.X.epochs: X trains in the run's first N epochs only; the lr schedule (and so
    its decay to 0) counts the shorter epochs."""
    values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / "run", epochs=3)
    values["tasks"]["sst"]["epochs"] = 1
    values["tasks"]["sts"]["epochs"] = 2.5
    trainer = _trainer(values)
    counts = [{n: sum(1 for step in trainer._plan(e) for name, _ in step if name == n)
               for n in ("sst", "quora", "sts")} for e in range(3)]
    # 8 SST, 6 Quora and 6 STS examples in batches of 4: 2 batches each
    assert counts == [{"sst": 2, "quora": 2, "sts": 2}, {"sst": 0, "quora": 2, "sts": 2},
                      {"sst": 0, "quora": 2, "sts": 1}]
    assert trainer.total_updates == 2 + 2 + 2  # round-robin: steps = the largest task's
    train(checked_config(values))
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    trained = [set(r["train"]) - {"overall"} for r in records if r["type"] == "epoch"]
    assert trained == [{"sst", "quora", "sts"}, {"quora", "sts"}, {"quora", "sts"}]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["updates"] == 6


def test_a_tasks_lr_scale_scales_the_updates_it_draws(task_dir, tiny_checkpoint, tmp_path):
    """tasks.X.lr_scale: an update of X's batches moves the weights `lr_scale` times as far
    (AdamW's first step is lr · sign(g), plus decay, both scaled), and the schedule's rate
    is back afterwards."""
    moved, rates = {}, {}
    for scale in (1.0, 2.0):
        values = tiny_config_values(task_dir, tiny_checkpoint, tmp_path / f"r{scale}")
        values["tasks"]["sst"]["lr_scale"] = scale
        trainer = _trainer(values)
        trainer.model.eval()  # no dropout: the same gradient in both runs
        before = trainer.model.heads["sst"].out.weight.detach().clone()
        window = {"tokens": 0, "slots": 0, "examples": 0, "time": 0.0, "loss": {}}
        trainer.train_step([("sst", [0, 1, 2, 3])], window)
        trainer.update()
        moved[scale] = trainer.model.heads["sst"].out.weight.detach() - before
        rates[scale] = [g["lr"] for g in trainer.optimizer.param_groups]
        assert trainer.lr_scales == []
    torch.testing.assert_close(moved[2.0], 2 * moved[1.0])
    assert rates[2.0] == pytest.approx(rates[1.0])


@pytest.mark.parametrize("task_settings, epochs, message", [
    ({"sst": {"epochs": 3}}, 2, "tasks.sst.epochs = 3 is more than train.epochs = 2"),
    ({"sst": {"epochs": 1}, "quora": {"epochs": 1}, "sts": {"epochs": 0.5}}, 2,
     "every task stops before train.epochs = 2"),
    ({"sst": {"epochs": 0}}, 2, r"tasks.sst.epochs: a number of epochs > 0"),
    ({"sst": {"lr_scale": 0}}, 2, r"tasks.sst.lr_scale: a number > 0"),
    ({"sst": {"lr_scale": "fast"}}, 2, r"tasks.sst.lr_scale: a number > 0"),
])
def test_per_task_budgets_are_checked_when_the_config_loads(task_settings, epochs, message):
    with pytest.raises(ConfigKeyError, match=message):
        checked_config({"tasks": task_settings, "train": {"epochs": epochs}})


def test_a_specialist_trains_for_its_tasks_epochs():
    from minbert.seeds import specialist_config
    config = checked_config({"tasks": {"sst": {"epochs": 1.5}}, "train": {"epochs": 3}})
    assert specialist_config(config, "sst").train.epochs == 2
    assert specialist_config(config, "sts").train.epochs == 3
    # train.specialist_epochs: the specialists' own count (the student keeps train.epochs)
    config = checked_config({"tasks": {"sst": {"epochs": 1.5}},
                             "train": {"epochs": 3, "specialist_epochs": 1}})
    assert specialist_config(config, "sst").train.epochs == 2  # the task's budget wins
    assert specialist_config(config, "sts").train.epochs == 1
    from minbert.seeds import student_config
    assert student_config(config).train.epochs == 3
    from minbert.seeds import finetune_configs
    _, tuned = finetune_configs(config, 1)  # --finetune 1: one epoch, whatever else is set
    assert specialist_config(tuned, "sts").train.epochs == 1
    with pytest.raises(ConfigKeyError, match="train.specialist_epochs"):
        checked_config({"train": {"specialist_epochs": -1}})
