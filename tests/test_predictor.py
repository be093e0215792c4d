"""Using a trained run: the Python API, predictions on new text from the CLI, ensembles,
and the messages bad input gets."""
import csv
import json

import numpy as np
import pytest
import torch

import minbert
from minbert import cli
from minbert.build import checked_config
from minbert.predictor import PredictError
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """Two one-epoch tiny runs (seeds 0 and 1) over the fixture tasks."""
    root = tmp_path_factory.mktemp("predict")
    (root / "data").mkdir()
    write_task_files(root / "data", repeat=2)
    folders = []
    for seed in (0, 1):
        values = tiny_config_values(root / "data", tiny_checkpoint, root / f"run{seed}",
                                    epochs=1, seed=seed)
        train(checked_config(values))
        folders.append(root / f"run{seed}")
    return folders


def test_api_predictions_on_dev_equal_the_training_evaluation(trained):
    from minbert.evaluation import evaluate
    from minbert.build import encode_split
    from minbert.loading import load_run
    run = load_run(trained[0])
    dev = encode_split(run.config, run.tasks, run.tokenizer, "dev")
    _, expected = evaluate(run.model, run.tasks, dev, 8, torch.device("cpu"))
    model = minbert.load(trained[0], precision="fp32")
    for name, data in dev.items():
        texts = data.examples.texts
        inputs = texts[0] if len(texts) == 1 else list(zip(*texts))
        prediction = model.predict(name, inputs)
        np.testing.assert_allclose(prediction.values, expected[name], rtol=1e-6)
        if prediction.probabilities is not None:
            assert np.allclose(prediction.probabilities.sum(1), 1.0)
            assert (prediction.probabilities.argmax(1) == prediction.labels).all()


def test_the_python_api_reads_like_the_readme(trained):
    model = minbert.load(str(trained[0]))
    sst = model.predict("sst", ["the movie is good", "an awful movie"])
    assert sst.labels.shape == (2,) and sst.probabilities.shape == (2, 5)
    quora = model.predict("quora", [("how do i learn python ?", "how do you learn python ?")])
    assert quora.probabilities.shape == (1, 2) and 0 <= quora.probabilities[0, 1] <= 1
    sts = model.predict("sts", [("a man plays guitar .", "a man plays the guitar .")])
    assert sts.scores.shape == (1,) and 0 <= sts.scores[0] <= 5


def test_an_ensemble_of_one_run_is_the_run_and_of_two_averages(trained):
    one = minbert.load(trained[0], precision="fp32")
    alone = minbert.load([trained[0]], precision="fp32")
    pair = minbert.load(trained, precision="fp32")
    second = minbert.load(trained[1], precision="fp32")
    inputs = ["the movie is good", "a great movie", "awful"]
    assert np.array_equal(one.predict("sst", inputs).probabilities,
                          alone.predict("sst", inputs).probabilities)
    mean = (one.predict("sst", inputs).probabilities
            + second.predict("sst", inputs).probabilities) / 2
    np.testing.assert_allclose(pair.predict("sst", inputs).probabilities, mean, rtol=1e-6)
    pairs = [("a dog runs .", "a cat runs .")]
    np.testing.assert_allclose(pair.predict("sts", pairs).scores,
                               (one.predict("sts", pairs).scores
                                + second.predict("sts", pairs).scores) / 2, rtol=1e-6)


def test_an_ensemble_of_a_multitask_run_and_a_specialist_averages_the_shared_task(
        trained, tmp_path, tiny_checkpoint, capsys):
    """A multi-task model beside a single-task specialist: SST is the mean of both, the
    other tasks the multi-task model's alone; evaluate --out writes a folder that compare
    reads with every task; a task declared otherwise by a member is refused."""
    from minbert.compare import compare_runs
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data", repeat=2), tiny_checkpoint,
                                tmp_path / "sst-only", epochs=1, seed=1)
    values["data"]["tasks"] = ["sst"]
    train(checked_config(values))
    multi = minbert.load(trained[0], precision="fp32")
    alone = minbert.load(tmp_path / "sst-only", precision="fp32")
    both = minbert.load([trained[0], tmp_path / "sst-only"], precision="fp32")
    assert list(both.tasks) == ["sst", "quora", "sts"]
    inputs = ["the movie is good", "a great movie", "awful"]
    np.testing.assert_allclose(both.predict("sst", inputs).probabilities,
                               (multi.predict("sst", inputs).probabilities
                                + alone.predict("sst", inputs).probabilities) / 2, rtol=1e-6)
    pairs = [("a dog runs .", "a cat runs .")]
    assert np.array_equal(both.predict("sts", pairs).scores, multi.predict("sts", pairs).scores)
    out = tmp_path / "mixed"
    assert cli.main(["evaluate", str(tmp_path / "sst-only"), str(trained[0]), "--out",
                     str(out), "--precision", "fp32"]) == 0
    assert "ensemble of 2 runs (sst: 2, quora: 1, sts: 1)" in capsys.readouterr().err
    rows = {row.name: row for row in compare_runs(out, trained[0], 200, 0)}
    assert set(rows) == {"sst", "quora", "sts", "overall"}
    assert rows["quora"].difference == 0 and rows["sts"].difference == 0
    # a member whose SST has other labels cannot join
    values = tiny_config_values(tmp_path / "data", tiny_checkpoint, tmp_path / "sst-6",
                                epochs=1)
    values["data"]["tasks"] = ["sst"]
    values["tasks"]["sst"]["num_classes"] = 6
    train(checked_config(values))
    with pytest.raises(PredictError, match="task sst: .*sst-6 declares it as"):
        minbert.load([trained[0], tmp_path / "sst-6"])


def test_bad_inputs_get_their_messages(trained):
    model = minbert.load(trained[0])
    with pytest.raises(PredictError, match="no task 'nli' in this run; it has sst, quora, sts"):
        model.predict("nli", ["x"])
    with pytest.raises(PredictError, match="input 2: an empty text"):
        model.predict("sst", ["good", "  "])
    with pytest.raises(PredictError, match="input 1: task quora takes a pair of sentences"):
        model.predict("quora", ["just one"])
    long = " ".join(["good"] * 100)  # the tiny run's max_length is 32
    with pytest.warns(UserWarning, match="2 of 3 inputs are longer than 32 tokens") as caught:
        model.predict("sst", [long, "good", long])
    assert len([w for w in caught if "longer than" in str(w.message)]) == 1


def test_one_input_gives_one_answer_never_one_per_character(trained):
    model = minbert.load(trained[0], precision="fp32")
    many = model.predict("sst", ["great", "a great film"])
    for i, text in enumerate(["great", "a great film"]):
        one = model.predict("sst", text)
        assert len(one) == 1 and one.labels[0] == many.labels[i]
        np.testing.assert_allclose(one.probabilities[0], many.probabilities[i], rtol=1e-6)
    pair = ("how do i cook rice ?", "how do you cook rice ?")
    one = model.predict("quora", pair)  # a tuple of two sentences: one pair
    assert len(one) == 1
    assert one.values[0] == model.predict("quora", [pair]).values[0]


def test_dict_rows_are_read_by_their_keys_not_iterated(trained):
    model = minbert.load(trained[0], precision="fp32")
    a, b = "how do i cook rice ?", "what is a dog ?"
    expected = model.predict("sts", [(a, b), (b, a)]).scores
    rows = [{"sentence1": a, "sentence2": b}, {"sentence2": a, "sentence1": b}]
    np.testing.assert_allclose(model.predict("sts", rows).scores, expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict("sts", {"text": a, "text_pair": b}).scores,
                               expected[:1], rtol=1e-6)
    with pytest.raises(PredictError, match=r"input 1: .* needs the keys sentence1 and "
                                           r"sentence2 \(or text and text_pair\)"):
        model.predict("sts", {"question1": a, "question2": b})
    with pytest.raises(PredictError, match="give a sentence, a pair or a list of them, got int"):
        model.predict("sst", 7)
    with pytest.raises(PredictError, match="input 2: task sst takes a sentence, got int"):
        model.predict("sst", ["good", 3])


def test_predictions_carry_the_class_names(trained):
    model = minbert.load(trained[0], precision="fp32")
    sst = model.predict("sst", ["the movie is good", "awful"])
    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    assert sst.label_names == [names[k] for k in sst.labels]
    assert model.predict("quora", ("a", "b")).label_names[0] in ("not duplicate", "duplicate")
    assert model.predict("sts", ("a", "b")).label_names is None
    assert "Prediction('sst', labels=" in repr(sst) and "object at" not in repr(sst)


def test_cli_reads_a_dataset_table_by_its_columns_and_keeps_its_ids(trained, tmp_path, capsys):
    """The dataset's own TSV (an unnamed index column, id, sentence, label): its header and
    ids are not scored as text; the ids come through to the output."""
    source = tmp_path / "dev.tsv"
    source.write_text("\tid\tsentence\tsentiment\n0\ta1\tthe movie is good\t4\n"
                      "1\tb2\tan awful movie\t0\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(trained[0]), "--task", "sst", "--input", str(source),
                     "--out", str(out), "--precision", "fp32"]) == 0
    with open(out, newline="") as fp:
        rows = list(csv.DictReader(fp))
    assert [(r["id"], r["text"]) for r in rows] == [("a1", "the movie is good"),
                                                   ("b2", "an awful movie")]
    assert rows[0]["label_name"] in ("very negative", "negative", "neutral", "positive",
                                     "very positive")
    named = tmp_path / "named.txt"  # --columns: a table whatever its name
    named.write_text("id,review\nx9,great\n", encoding="utf-8")
    assert cli.main(["predict", str(trained[0]), "--task", "sst", "--input", str(named),
                     "--columns", "review"]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert printed == [{**printed[0], "id": "x9", "text": "great"}]
    assert cli.main(["predict", str(trained[0]), "--task", "sst", "--input", str(named),
                     "--out", str(tmp_path / "x.parquet")]) == 2
    assert "write a .csv, .tsv, .jsonl file" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_on_new_text_round_trips(trained, tmp_path, capsys, suffix):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("the movie is good\nan awful movie\n", encoding="utf-8")
    out = tmp_path / f"sst{suffix}"
    assert cli.main(["predict", str(trained[0]), "--task", "sst", "--input", str(sentences),
                     "--out", str(out), "--precision", "fp32"]) == 0
    expected = minbert.load(trained[0], precision="fp32").predict(
        "sst", ["the movie is good", "an awful movie"])
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        with open(out, newline="") as fp:
            rows = list(csv.DictReader(fp))
    assert [r["text"] for r in rows] == ["the movie is good", "an awful movie"]
    assert [int(r["label"]) for r in rows] == expected.labels.tolist()
    assert float(rows[0]["p_4"]) == pytest.approx(expected.probabilities[0, 4], abs=1e-6)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("q1\tq2\nhow do i cook rice ?\thow do you cook rice ?\n", encoding="utf-8")
    assert cli.main(["predict", str(trained[0]), "--task", "quora", "--input", str(pairs),
                     "--columns", "q1,q2"]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert printed[0]["text1"] == "how do i cook rice ?" and "p_1" in printed[0]


@pytest.mark.parametrize("content, args, message", [
    ("good\n\nbad\n", ["--task", "sst"], "sentences.txt, line 2: an empty line"),
    ("a\tb\nx\ty\n", ["--task", "quora"],
     "no column(s) ['sentence1', 'sentence2']; the header has ['a', 'b']"),
    ("good\n", ["--task", "nli"], "--task nli: the run has sst, quora, sts"),
])
def test_cli_bad_new_text_names_the_problem(trained, tmp_path, capsys, content, args, message):
    source = tmp_path / "sentences.txt"
    source.write_text(content, encoding="utf-8")
    assert cli.main(["predict", str(trained[0]), "--input", str(source), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_evaluates_an_ensemble(trained, capsys):
    assert cli.main(["evaluate", *map(str, trained), "--precision", "fp32"]) == 0
    captured = capsys.readouterr()
    assert "ensemble of 2 runs" in captured.err and "overall" in captured.out


def test_an_evaluation_folder_compares_an_ensemble_with_its_members(trained, tmp_path,
                                                                    capsys):
    from minbert.compare import compare_runs
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["evaluate", str(trained[0]), "--out", str(one)]) == 0
    assert cli.main(["evaluate", *map(str, trained), "--out", str(two)]) == 0
    metrics = json.loads((two / "dev-metrics.json").read_text())
    assert f"{metrics['overall']:.3f}" in capsys.readouterr().out
    # an ensemble of one is its run: every difference exactly zero
    assert all(row.difference == 0 for row in compare_runs(one, trained[0], 200, 0))
    rows = {row.name: row for row in compare_runs(two, trained[0], 200, 0)}
    member = json.loads((trained[0] / "dev-metrics.json").read_text())
    assert rows["overall"].difference == pytest.approx(metrics["overall"] - member["overall"],
                                                       abs=1e-3)
    record = json.loads((two / "log.jsonl").read_text())
    assert record["members"] == [str(p) for p in trained]
    # evaluated again into the same folder: allowed; into a run, or a training run: refused
    assert cli.main(["evaluate", *map(str, trained), "--out", str(two)]) == 0
    assert cli.main(["evaluate", str(trained[0]), "--out", str(trained[1])]) == 2
    assert "holds a training run" in capsys.readouterr().err


def test_averaged_weights_are_one_loadable_model_that_compare_reads(trained, tmp_path,
                                                                    tiny_checkpoint, capsys):
    """evaluate --average: OUT holds the mean of the runs' weights as a run that loads,
    predicts and exports; its dev predictions are the averaged model's; compare reads it;
    unlike models and a missing --out are refused by name."""
    from minbert.compare import compare_runs
    from minbert.loading import load_run
    from minbert.runs import RunError
    from minbert.soup import average_weights
    out = tmp_path / "soup"
    assert cli.main(["evaluate", str(trained[0]), str(trained[1]), "--average", "--out",
                     str(out), "--precision", "fp32"]) == 0
    assert "the averaged model" in capsys.readouterr().out
    a, b, soup = (load_run(f).model.state_dict() for f in (*trained, out))
    for name, tensor in soup.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (a[name] + b[name]) / 2)
    assert not torch.equal(soup["heads.sst.out.weight"], a["heads.sst.out.weight"])
    model = minbert.load(out, precision="fp32")
    inputs = ["the movie is good", "awful"]
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert logged["averaged"] is True and logged["members"] == [str(f) for f in trained]
    rows = {row.name: row for row in compare_runs(out, trained[0], 200, 0)}
    assert set(rows) == {"sst", "quora", "sts", "overall"}
    assert cli.main(["export", str(out), str(tmp_path / "export")]) == 0
    exported = minbert.load(tmp_path / "export", precision="fp32")
    np.testing.assert_allclose(exported.predict("sst", inputs).values,
                               model.predict("sst", inputs).values, rtol=1e-6)
    capsys.readouterr()
    assert cli.main(["evaluate", str(trained[0]), str(trained[1]), "--average"]) == 2
    assert "--average writes the averaged model into --out" in capsys.readouterr().err
    with pytest.raises(RunError, match="give two or more runs"):
        average_weights([trained[0]])
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "bi", epochs=1)
    values["tasks"]["sts"]["pair_encoding"] = "bi"
    train(checked_config(values))
    with pytest.raises(RunError, match="bi and .*run0 differ in their encodings"):
        average_weights([trained[0], tmp_path / "bi"])
