"""Distillation from trained runs: the ensemble's target, the term's definition, the
checks on teachers, and a student trained with it."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

import minbert
from minbert import cli
from minbert.build import checked_config, encode_train
from minbert.config import ConfigKeyError
from minbert.loading import build_model
from minbert.regularizers.distill import Distill
from minbert.tasks import build_task, build_tasks
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("distill")
    (root / "data").mkdir()
    write_task_files(root / "data")
    values = tiny_config_values(root / "data", tiny_checkpoint, root / "teacher", epochs=1)
    train(checked_config(values))
    return root


def a_student(teacher, tiny_checkpoint):
    """A fresh student's tasks, model and encoded training sets over the teacher's data."""
    values = tiny_config_values(teacher / "data", tiny_checkpoint, teacher / "student")
    config = checked_config(values)
    tasks = build_tasks(config)
    student, tokenizer = build_model(config, tasks)
    train_sets, _, _ = encode_train(config, tasks, tokenizer)
    return tasks, student, train_sets


def test_the_ensemble_target_is_the_mean_prediction():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    sst = build_task("sst", {})
    mean = sst.mean_logits([a, b])
    assert torch.allclose(mean.softmax(-1), (a.softmax(-1) + b.softmax(-1)) / 2, atol=1e-6)
    a, b = torch.randn(4, 1), torch.randn(4, 1)
    for task in (build_task("quora", {}), build_task("sts", {})):
        mean = task.mean_logits([a, b])
        assert torch.allclose(torch.sigmoid(mean), (torch.sigmoid(a) + torch.sigmoid(b)) / 2,
                              atol=1e-6)
    sts = build_task("sts", {})
    assert torch.allclose(sts.predict(sts.mean_logits([a, b])),
                          (sts.predict(a) + sts.predict(b)) / 2, atol=1e-5)


def test_the_term_is_the_divergence_from_the_teachers_mean(teacher, tiny_checkpoint):
    tasks, student, train_sets = a_student(teacher, tiny_checkpoint)
    folder = str(teacher / "teacher")
    distill = Distill([folder, folder], weight=0.5, tasks=tasks)
    from minbert.loading import load_run
    reference = load_run(folder).model.eval()
    for name, task in tasks.items():
        batch = train_sets[name].batch(list(range(4)))
        logits = student(batch).float()
        with torch.no_grad():
            teacher_logits = reference(batch).float()
        expected = 0.5 * task.divergence(logits, task.mean_logits([teacher_logits] * 2), "kl")
        assert distill(student, task, batch, logits).item() == pytest.approx(expected.item(),
                                                                              rel=1e-5)
        assert len(distill.cache[name]) == 4  # cached by example


def test_teacher_outputs_are_scored_once_for_every_student_of_the_process(
        teacher, tiny_checkpoint):
    """The seeds of one command share the teachers' outputs, keyed by each example's tokens
    (not its position, which a seed's subsample changes): a second student with the same
    teachers runs them only on examples no student has seen."""
    from minbert.regularizers import distill as module
    module._SHARED.clear()
    tasks, student, train_sets = a_student(teacher, tiny_checkpoint)
    folder = str(teacher / "teacher")
    first = Distill({"sst": [folder]}, tasks=tasks)
    task, examples = tasks["sst"], train_sets["sst"]
    batch = examples.batch([0, 1, 2, 3])
    expected = first.targets(student, task, batch, "cpu")
    second = Distill({"sst": [folder]}, tasks=tasks)
    second._load(student, "cpu")
    assert second.cache["sst"] is first.cache["sst"]
    scored = []
    reference = second.teachers["sst"][0].model
    second.teachers["sst"][0].model = lambda part: scored.append(part.size) or reference(part)
    # the same examples in another order and batch: looked up, the teacher not run
    again = second.targets(student, task, examples.batch([3, 1, 0, 2]), "cpu")
    assert scored == [] and torch.equal(again, expected[[3, 1, 0, 2]])
    # two new examples beside two known ones: only the new ones reach the teacher
    mixed = second.targets(student, task, examples.batch([2, 5, 0, 6]), "cpu")
    assert scored == [2] and torch.equal(mixed[[0, 2]], expected[[2, 0]])
    with torch.no_grad():
        alone = reference(examples.batch([5, 6])).float()
    assert torch.allclose(mixed[[1, 3]], task.mean_logits([alone]), atol=1e-6)
    # other teachers (here: the same run twice, an ensemble) get their own entries
    other = Distill({"sst": [folder, folder]}, tasks=tasks)
    other._load(student, "cpu")
    assert other.cache["sst"] is not first.cache["sst"] and not other.cache["sst"]


def test_teacher_annealing_moves_the_target_from_the_teachers_to_the_gold_labels(
        teacher, tiny_checkpoint):
    """BAM: the task is trained on λ · gold loss + (1 − λ) · divergence, λ from 0 at the
    first update to 1 at the last; the regulariser's term turns the trainer's gold loss
    into that mix. Teachers by task: a task without one gets no term."""
    tasks, student, train_sets = a_student(teacher, tiny_checkpoint)
    folder = str(teacher / "teacher")
    plain = Distill({"sst": [folder]}, tasks=tasks)
    annealed = Distill({"sst": [folder]}, anneal="linear", tasks=tasks)
    annealed.start(total_updates=5)
    task, batch = tasks["sst"], train_sets["sst"].batch(list(range(4)))
    logits = student(batch).float()
    gold = task.loss(logits, batch.labels).item()
    divergence = plain(student, task, batch, logits).item()
    for updates, share in ((0, 0.0), (2, 0.5), (4, 1.0)):
        annealed.updates = updates
        total = gold + annealed(student, task, batch, logits).item()
        assert total == pytest.approx(share * gold + (1 - share) * divergence, rel=1e-5)
    assert annealed(student, tasks["sts"], train_sets["sts"].batch([0]), logits[:1, :1]) == 0
    restored = Distill({"sst": [folder]}, anneal="linear", tasks=tasks)
    restored.load_state_dict(annealed.state_dict())
    restored.start(total_updates=5)
    assert restored.gold_share() == annealed.gold_share() == 1.0
    with pytest.raises(ValueError, match="distill.teachers.nli: the student has no task"):
        Distill({"nli": [folder]}, tasks=tasks)
    with pytest.raises(ValueError, match="anneal = 'cosine'; use one of none, linear"):
        Distill([folder], anneal="cosine", tasks=tasks)


def test_a_resumed_student_keeps_the_teachers_it_started_with(teacher, tiny_checkpoint):
    """A --seeds folder of teachers that gains seeds while the student runs: the resumed
    student goes on with the runs it started with (they are in its checkpoint), and says so."""
    from minbert.data import MinbertWarning
    tasks, _, _ = a_student(teacher, tiny_checkpoint)
    folder = str(teacher / "teacher")
    started = Distill({"sst": [folder]}, tasks=tasks)
    state = started.state_dict()
    assert state["teachers"] == started.describe()["teachers"] == {"sst": [folder]}
    now = Distill({"sst": [folder, folder]}, tasks=tasks)  # the folder "gained" a seed
    now.cache["sst"] = {0: torch.zeros(5)}
    with pytest.warns(MinbertWarning, match=r"resumes with the teachers it started with "
                                            r"\(sst: 1 run\(s\)\); .* sst: 2 run\(s\)"):
        now.load_state_dict(state)
    assert now.folders == {"sst": [folder]} and now.cache == {}
    same = Distill({"sst": [folder]}, tasks=tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing changed: no warning
        same.load_state_dict(state)
    assert same.folders == {"sst": [folder]}


def test_teachers_are_checked(teacher, tiny_checkpoint):
    values = tiny_config_values(teacher / "data", tiny_checkpoint, teacher / "student")
    values["regularizers"] = {"distill": {"teachers": [str(teacher / "nowhere")]}}
    with pytest.raises(ConfigKeyError, match="nowhere"):
        checked_config(values)
    values["regularizers"] = {"distill": {"teachers": [str(teacher / "teacher")],
                                          "divergence": "l1"}}
    with pytest.raises(ConfigKeyError, match="divergence"):
        checked_config(values)
    values["regularizers"] = {"distill": {"teachers": [str(teacher / "teacher")]}}
    values["model"]["pair_encoding"] = "bi"  # the teacher cross-encodes its pairs
    config = checked_config(values)
    tasks = build_tasks(config)
    student, tokenizer = build_model(config, tasks)
    train_sets, _, _ = encode_train(config, tasks, tokenizer)
    distill = Distill([str(teacher / "teacher")], tasks=tasks)
    batch = train_sets["quora"].batch([0, 1])
    with pytest.raises(ValueError, match="encodes quora as 'cross', the student as 'bi'"):
        distill(student, tasks["quora"], batch, student(batch))


@pytest.mark.slow
def test_a_student_trains_with_its_teachers(teacher, tiny_checkpoint):
    values = tiny_config_values(teacher / "data", tiny_checkpoint, teacher / "student2")
    values["regularizers"] = {"distill": {"teachers": [str(teacher / "teacher")] * 2,
                                          "weight": 1.0}}
    metrics = train(checked_config(values))
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.slow
def test_a_finished_student_is_read_without_its_teachers_or_its_tuner(
        tmp_path, tiny_checkpoint, capsys):
    """Reading a run needs only its files: its teachers may be gone and its config may hold
    a study's [tune] table; compare and report still read it."""
    import shutil
    (tmp_path / "data").mkdir()
    write_task_files(tmp_path / "data")
    values = tiny_config_values(tmp_path / "data", tiny_checkpoint, tmp_path / "teacher",
                                epochs=1)
    train(checked_config(values))
    values.update(run_dir=str(tmp_path / "student"),
                  regularizers={"distill": {"teachers": [str(tmp_path / "teacher")]}},
                  tune={"trials": 2, "space": {"train.lr": {"log_uniform": [1e-4, 1e-2]}}})
    train(checked_config(values))
    plain = tiny_config_values(tmp_path / "data", tiny_checkpoint, tmp_path / "plain",
                               epochs=1, seed=1)
    train(checked_config(plain))
    shutil.rmtree(tmp_path / "teacher")
    with pytest.raises(ConfigKeyError, match="teachers"):  # training it again would need them
        checked_config(values)
    capsys.readouterr()
    student, other = str(tmp_path / "student"), str(tmp_path / "plain")
    assert cli.main(["compare", student, other]) == 0
    assert "overall" in capsys.readouterr().out
    assert cli.main(["report", student, other, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "student" / "analysis.json").is_file()



@pytest.mark.slow
def test_specialists_train_one_task_each_compare_with_a_multitask_run_and_teach_it(
        teacher, tiny_checkpoint, tmp_path, capsys):
    """`--specialists`: a run per task; `compare` sets a multi-task run against them task by
    task (the overall score over what the three models give); a student distils them with
    teacher annealing, each task from its own specialist."""
    import json

    from minbert.outputs import read_outputs
    from minbert.seeds import specialist_config, train_specialists
    values = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "spec", epochs=1)
    config = checked_config(values)
    assert specialist_config(config, "sts").data.tasks == ["sts"]
    results = train_specialists(config)
    assert {t: list(m) for t, m in results.items()} == {t: [t, "overall"] for t in results}
    merged = read_outputs(tmp_path / "spec")
    assert set(merged.tasks) == {"sst", "quora", "sts"} and len(merged.ids["sst"]) == 8
    multi = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "multi", epochs=1)
    train(checked_config(multi))
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "multi"), str(tmp_path / "spec")]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{t} " in table for t in ("sst", "quora", "sts", "overall"))
    student = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "bam", epochs=2)
    student["regularizers"] = {"distill": {
        "teachers": {t: [str(tmp_path / "spec" / f"specialist-{t}")] for t in results},
        "anneal": "linear"}}
    metrics = train(checked_config(student))
    assert all(math.isfinite(v) for v in metrics.values())
    start = json.loads((tmp_path / "bam" / "config.json").read_text())
    assert start["regularizers"]["distill"]["teachers"]["sts"] == [
        str(tmp_path / "spec" / "specialist-sts")]  # the teachers named in the run's config


@pytest.mark.slow
def test_finetune_trains_the_multitask_model_then_each_task_from_it(teacher, tiny_checkpoint,
                                                                    tmp_path, capsys):
    """`train --finetune` (MT-DNN): RUN/multitask per seed, then RUN/specialist-TASK per
    seed, each starting from that seed's multi-task weights; compare reads both."""
    from minbert.tuning.study import to_toml
    values = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "ft", epochs=1)
    values["tasks"]["sst"]["epochs"] = 0.5  # budgets the multi-task stage only
    config = tmp_path / "ft.toml"
    config.write_text(to_toml(values), encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--finetune", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "each task fine-tuned from" in out
    for seed in (0, 1):
        saved = json.loads((tmp_path / "ft" / "specialist-sts" / f"seed-{seed}" /
                            "config.json").read_text())
        assert saved["model"]["init_from"] == str(tmp_path / "ft" / "multitask")
        assert saved["data"]["tasks"] == ["sts"] and saved["train"]["seed"] == seed
        assert "epochs" not in saved["tasks"]["sst"]
    multi = json.loads((tmp_path / "ft" / "multitask" / "seed-0" / "config.json").read_text())
    assert multi["tasks"]["sst"]["epochs"] == 0.5
    assert cli.main(["compare", str(tmp_path / "ft"), str(tmp_path / "ft" / "multitask")]) == 0
    assert "\noverall " in capsys.readouterr().out
    assert cli.main(["train", "--config", str(config), "--finetune", "0"]) == 2
    assert "--finetune 0: the fine-tuning's epochs, at least 1" in capsys.readouterr().err


def test_init_from_starts_from_a_runs_encoder_and_shared_heads(teacher, tiny_checkpoint,
                                                               tmp_path):
    from minbert.loading import load_run, start_from_run
    from minbert.runs import RunError
    values = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "x")
    values["data"]["tasks"] = ["sst"]
    config = checked_config(values)
    tasks = build_tasks(config)
    model, _ = build_model(config, tasks)
    assert start_from_run(model, teacher / "teacher", seed=0) == teacher / "teacher"
    source = load_run(teacher / "teacher").model
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)
    torch.testing.assert_close(model.heads["sst"].out.weight, source.heads["sst"].out.weight)
    with pytest.raises(RunError, match="model.init_from: .*no such run folder"):
        start_from_run(model, tmp_path / "missing", seed=0)
    (tmp_path / "seeds" / "seed-1").mkdir(parents=True)
    with pytest.raises(RunError, match="a --seeds folder without a run for seed 0"):
        start_from_run(model, tmp_path / "seeds", seed=0)
    values["tasks"]["sst"]["pool_layers"] = 2  # another head shape
    config = checked_config(values)
    wide, _ = build_model(config, build_tasks(config))
    with pytest.raises(RunError, match="its sst head has another shape"):
        start_from_run(wide, teacher / "teacher", seed=0)


@pytest.mark.slow
def test_distill_trains_the_specialists_then_their_student(teacher, tiny_checkpoint, tmp_path,
                                                           capsys):
    """`train --distill`: RUN/specialist-TASK per seed, then RUN/student per seed taught
    by each task's specialists (their seeds' ensemble) with teacher annealing."""
    from minbert.tuning.study import to_toml
    values = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "bam", epochs=1)
    values["regularizers"] = {"distill": {"teachers": ["elsewhere"], "weight": 0.5}}
    config = tmp_path / "bam.toml"
    config.write_text(to_toml(values), encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--distill", "--seeds", "0,1"]) == 2
    assert "regularizers.distill.teachers is set" in capsys.readouterr().err
    del values["regularizers"]["distill"]["teachers"]  # --distill names them
    values["regularizers"]["distill"]["anneal"] = "cosine"
    config.write_text(to_toml(values), encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--distill"]) == 2
    assert "anneal = 'cosine'" in capsys.readouterr().err
    assert not (tmp_path / "bam").exists()  # refused before any training
    del values["regularizers"]["distill"]["anneal"]
    config.write_text(to_toml(values), encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--distill", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "the student: " in out
    verdict = out.split("the student against its specialists")[1]  # printed last, per task
    assert "mean over the common seeds (2 seeds: 0, 1" in verdict
    assert all(f"\n{t} " in verdict for t in ("sst", "quora", "sts", "overall"))
    assert f"minbert evaluate {tmp_path / 'bam' / 'student'} --average" in verdict
    assert cli.main(["train", "--config", str(config), "--distill", "--seeds", "1"]) == 0
    assert "--average" in capsys.readouterr().out  # the folder's seed 0 counts too
    saved = json.loads((tmp_path / "bam" / "student" / "seed-1" / "config.json").read_text())
    distill = saved["regularizers"]["distill"]
    assert distill["teachers"] == {t: [str(tmp_path / "bam" / f"specialist-{t}")]
                                   for t in ("sst", "quora", "sts")}
    assert distill["anneal"] == "linear" and distill["weight"] == 0.5
    start = json.loads((tmp_path / "bam" / "student" / "seed-1" / "log.jsonl")
                       .read_text().splitlines()[0])
    assert start["type"] == "start"  # the log names each teacher run, the folders resolved
    assert start["regularizers"]["distill"]["teachers"] == {
        t: [str(tmp_path / "bam" / f"specialist-{t}" / f"seed-{s}") for s in (0, 1)]
        for t in ("sst", "quora", "sts")}
    assert (tmp_path / "bam" / "specialist-sts" / "seed-1" / "best.pt").is_file()
    assert cli.main(["compare", str(tmp_path / "bam" / "student"), str(tmp_path / "bam")]) == 0
    assert "\noverall " in capsys.readouterr().out
    assert cli.main(["train", "--config", str(config), "--distill", "--finetune"]) == 2
    assert "--finetune and --distill: choose one" in capsys.readouterr().err


def test_teachers_label_another_tasks_training_texts_left_out_of_validation(
        teacher, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_task_files(data, repeat=4)
    (data / "quora-train-subset.csv").write_bytes((data / "quora-train.csv").read_bytes())
    out = tmp_path / "silver.csv"
    assert cli.main(["data", "label", str(teacher / "teacher"), "--task", "sts",
                     "--texts-of", "quora", "--out", str(out), "--data-dir", str(data),
                     "--validation", "0.3"]) == 0
    assert "labelled for sts by the mean of 1 run(s)" in capsys.readouterr().out
    quora = build_task("quora", {})
    kept, held, _ = quora.read_train_and_validation(data, 0, 0.3)
    silver = build_task("sts", {}).read(out)
    # the training pairs only, in order, each with the teacher's score
    assert silver.ids == kept.ids and silver.texts == kept.texts and len(held) > 0
    scores = minbert.load(teacher / "teacher").predict("sts", list(zip(*kept.texts))).scores
    assert np.allclose(silver.labels, scores, atol=1e-4)
    assert len(set(np.round(silver.labels, 3))) > 1

    # in a task's train_files with hold_out = false, none of it joins the validation split
    spec = {"train_files": ["sts-train.csv", {"path": str(out), "hold_out": False}],
            "dev_file": "sts-dev.csv"}
    train_part, validation, counts = build_task("sts", spec).read_train_and_validation(
        data, 0, 0.3)
    assert counts[str(out)] == len(silver) and set(silver.ids) <= set(train_part.ids)
    assert not set(silver.ids) & set(validation.ids) and len(validation) > 0
    spec["train_files"][1] = str(out)  # held out as any file by default
    _, validation, _ = build_task("sts", spec).read_train_and_validation(data, 0, 0.3)
    assert set(silver.ids) & set(validation.ids)


@pytest.mark.parametrize("options, message", [
    (["--task", "para"], "no such task"),
    (["--task", "sts", "--texts-of", "sst"], "its examples have 1 text(s), task sts reads 2"),
    (["--validation", "1.5"], "--validation 1.5"),
])
def test_labelling_errors_name_the_option(teacher, tmp_path, capsys, options, message):
    args = ["data", "label", str(teacher / "teacher"), "--task", "sts", "--texts-of", "quora",
            "--out", str(tmp_path / "out.csv"), "--data-dir", str(teacher / "data"), *options]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out.csv").exists()


def test_teachers_label_a_file_of_your_own_texts(teacher, tmp_path, capsys):
    """--texts: one sentence a line for a one-text task (ids NAME-N), or a table with the
    task's text columns whose `id` column gives the ids; each with the teachers' label."""
    sentences = ["a wonderful , moving film", "dull and far too long", "it is a movie"]
    lines = tmp_path / "reviews.txt"
    lines.write_text("".join(f"{s}\n" for s in sentences), encoding="utf-8")
    out = tmp_path / "transfer-sst.csv"
    assert cli.main(["data", "label", str(teacher / "teacher"), "--task", "sst", "--texts",
                     str(lines), "--out", str(out)]) == 0
    assert f"wrote {out}: 3 {lines} examples labelled for sst" in capsys.readouterr().out
    written = build_task("sst", {}).read(out)
    assert written.ids == ["reviews-1", "reviews-2", "reviews-3"]
    assert list(written.texts[0]) == sentences
    expected = minbert.load(teacher / "teacher").predict("sst", sentences).labels
    assert list(written.labels) == list(expected)

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("id\tsentence2\tsentence1\np1\ta dog runs\ta dog is running\n"
                     "p2\tstocks fell\ta cat sleeps\n", encoding="utf-8")
    assert cli.main(["data", "label", str(teacher / "teacher"), "--task", "sts", "--texts",
                     str(pairs), "--out", str(out)]) == 0
    written = build_task("sts", {}).read(out)
    assert written.ids == ["p1", "p2"]  # the columns by name, in the task's order
    assert list(zip(*written.texts)) == [("a dog is running", "a dog runs"),
                                         ("a cat sleeps", "stocks fell")]
    scores = minbert.load(teacher / "teacher").predict(
        "sts", [("a dog is running", "a dog runs"), ("a cat sleeps", "stocks fell")]).scores
    assert np.allclose(written.labels, scores, atol=1e-4)

    reviews = tmp_path / "reviews.csv"  # a table with columns of other names: --columns
    reviews.write_text("stars,review\n5,a wonderful film\n1,dull and long\n", encoding="utf-8")
    assert cli.main(["data", "label", str(teacher / "teacher"), "--task", "sst", "--texts",
                     str(reviews), "--columns", "review", "--out", str(out)]) == 0
    written = build_task("sst", {}).read(out)  # written with the task's own columns
    assert list(written.texts[0]) == ["a wonderful film", "dull and long"]
    assert written.ids == ["reviews-1", "reviews-2"]


@pytest.mark.parametrize("options, message", [
    (["--task", "sts", "--texts", "{pairs}", "--texts-of", "quora"], "not allowed with"),
    (["--task", "sst", "--texts", "{pairs}"], "no column(s) ['sentence']"),
    (["--task", "sts", "--texts", "{missing}"], "no such file"),
    (["--task", "sst", "--texts", "{empty}"], "no texts to label"),
    (["--task", "sts", "--texts", "{pairs}", "--columns", "sentence1"], "task sts reads 2"),
    (["--task", "sts", "--texts-of", "quora", "--columns", "a,b"], "give --texts"),
])
def test_labelling_a_file_names_what_is_wrong(teacher, tmp_path, capsys, options, message):
    (tmp_path / "pairs.csv").write_text("sentence1,sentence2\na,b\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    files = {"pairs": tmp_path / "pairs.csv", "missing": tmp_path / "missing.txt",
             "empty": tmp_path / "empty.txt"}
    args = ["data", "label", str(teacher / "teacher"), "--out", str(tmp_path / "out.csv"),
            *(option.format(**files) for option in options)]
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out.csv").exists()


def test_hold_out_is_checked():
    with pytest.raises(ValueError, match="hold_out is true or false"):
        build_task("sts", {"train_files": [{"path": "a.csv", "hold_out": "no"}]})


@pytest.mark.slow
def test_distill_transfer_has_the_specialists_label_another_tasks_texts_for_the_student(
        teacher, tiny_checkpoint, tmp_path, capsys):
    """train.distill_transfer: after the specialists, RUN/transfer-TASK.csv holds the
    source task's training texts (its validation share left out) with TASK's specialists'
    label, and the student trains on it as one more file that holds nothing out."""
    from minbert.tuning.study import to_toml
    values = tiny_config_values(teacher / "data", tiny_checkpoint, tmp_path / "bam", epochs=1)
    values["data"]["validation"] = 0.3
    config = tmp_path / "bam.toml"
    for transfer, message in (({"sts": "sst"}, "its examples have 1 text(s), sts's have 2"),
                              ({"para": "quora"}, "'para' is not one of data.tasks"),
                              ({"sts": {"texts_of": "quora", "size": 3}}, "a task name, "),
                              ({"sst": {"texts_of": "quora", "texts": "a.txt"}}, "a task name, "),
                              ({"sst": {"texts": "missing.txt"}}, "no such file")):
        values["train"]["distill_transfer"] = transfer
        config.write_text(to_toml(values), encoding="utf-8")
        assert cli.main(["train", "--config", str(config), "--distill"]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bam").exists()
    reviews = ["a wonderful , moving film", "dull and far too long", "it is a movie"]
    (teacher / "data" / "reviews.txt").write_text("\n".join(reviews), encoding="utf-8")
    values["train"]["distill_transfer"] = {"sts": {"texts_of": "quora", "subsample": 3},
                                           "sst": {"texts": "reviews.txt"}}  # in data.dir
    config.write_text(to_toml(values), encoding="utf-8")
    assert cli.main(["train", "--config", str(config), "--distill"]) == 0
    transfer = tmp_path / "bam" / "transfer-sts.csv"
    out = capsys.readouterr().out
    assert "transfer-sts.csv: 4 quora examples labelled for sts" in out
    assert "transfer-sst.csv: 3 " in out and "reviews.txt examples labelled for sst" in out
    own = build_task("sst", {}).read(tmp_path / "bam" / "transfer-sst.csv")
    assert list(own.texts[0]) == reviews and list(own.labels) == list(
        minbert.load(tmp_path / "bam" / "specialist-sst").predict("sst", reviews).labels)
    verdict = out.split("the student against its specialists")[1]  # one run each: bootstrap
    assert "paired bootstrap over the same dev examples" in verdict and "\nsts " in verdict
    assert "--average" not in verdict  # one seed: no soup to suggest
    quora = build_task("quora", values["tasks"]["quora"])
    kept, held, _ = quora.read_train_and_validation(teacher / "data", 0, 0.3)
    silver = build_task("sts", {}).read(transfer)
    assert silver.ids == kept.ids and len(held) > 0
    scores = minbert.load(tmp_path / "bam" / "specialist-sts").predict(
        "sts", list(zip(*kept.texts))).scores
    assert np.allclose(silver.labels, scores, atol=1e-4)
    saved = json.loads((tmp_path / "bam" / "student" / "config.json").read_text())
    assert saved["tasks"]["sts"]["train_files"] == [
        "sts-train.csv", {"path": str(transfer.resolve()), "hold_out": False, "subsample": 3}]
    assert saved["tasks"]["sst"]["train_files"][-1] == {
        "path": str((tmp_path / "bam" / "transfer-sst.csv").resolve()), "hold_out": False}
    assert saved["train"]["distill_transfer"] == {}
    start = json.loads((tmp_path / "bam" / "student" / "log.jsonl").read_text().splitlines()[0])
    assert start["train_files"][str(transfer.resolve())] == 3
    specialist = json.loads((tmp_path / "bam" / "specialist-sts" / "config.json").read_text())
    assert specialist["train"]["distill_transfer"] == {}
    assert specialist["tasks"]["sts"]["train_files"] == ["sts-train.csv"]
    labels = transfer.read_bytes()
    assert cli.main(["train", "--config", str(config), "--distill"]) == 0  # all finished
    assert "transfer-sts.csv: labelled earlier, reused" in capsys.readouterr().out
    assert transfer.read_bytes() == labels
