"""Extra training data (SNLI, Yelp) and `minbert data fetch`'s conversion, on fixtures."""
import json

import numpy as np
import pytest

from minbert.cli import main
from minbert.convert import convert
from minbert.data import DataError
from minbert.fetch import SOURCES, fetch, write_dataset
from minbert.tasks import build_task


def snli_line(votes, gold=None, s1="A man plays a guitar.", s2="A person makes music.",
              pair="p1"):
    gold = gold or max(set(votes), key=votes.count)
    return json.dumps({"annotator_labels": votes, "gold_label": gold, "pairID": pair,
                       "sentence1": s1, "sentence2": s2})


def test_snli_votes_are_averaged_and_ungolded_pairs_skipped(tmp_path):
    source = tmp_path / "snli.jsonl"
    source.write_text("\n".join([
        snli_line(["entailment", "entailment", "entailment", "neutral", "neutral"], pair="a"),
        snli_line(["contradiction"], pair="b"),
        snli_line(["neutral", "entailment", "contradiction", "neutral", "entailment"],
                  gold="-", pair="c"),
        snli_line(["neutral"], s2="Line one\nline\ttwo.", pair="d"),
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "snli-train.csv"
    report = convert("snli", source, out)
    assert report.written == 3 and report.skipped == {"pairs without a gold label": 1}
    examples = build_task("sts", {}).read(out)
    np.testing.assert_allclose(examples.labels, [(3 * 5 + 2 * 3) / 5, 0.0, 3.0])
    assert examples.texts[1][2] == "Line one line two."
    assert len(set(examples.ids)) == 3


@pytest.mark.parametrize("line, message", [
    ("{not json", "not a JSON object"),
    (json.dumps({"sentence1": "a", "sentence2": "b", "gold_label": "neutral"}),
     "missing field(s) ['annotator_labels']"),
    (snli_line(["neutral", "maybe"], gold="neutral"), "annotator_labels"),
    ("[1, 2]", "not a JSON object (got list)"),
    (json.dumps({"sentence1": None, "sentence2": "b", "gold_label": "neutral",
                 "annotator_labels": ["neutral"]}), "sentence1 (None)"),
])
def test_snli_malformed_line_is_an_error_naming_the_line(tmp_path, line, message):
    source = tmp_path / "snli.jsonl"
    source.write_text(snli_line(["neutral"]) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    with pytest.raises(DataError) as error:
        convert("snli", source, out)
    assert f"{source}, line 2" in str(error.value) and message in str(error.value)
    assert not out.exists() and not list(tmp_path.glob("out.csv*.tmp"))


def test_yelp_stars_become_sentiment_with_or_without_header(tmp_path):
    rows = ['"5","Great tacos.\\nWould ""totally"" return."', '"1","Cold food."',
            '"3",""', '"2","Slow\tservice."']
    for header in ("", '"class_index","review_text"\n'):
        source = tmp_path / "yelp.csv"
        source.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
        out = tmp_path / "yelp-train.csv"
        report = convert("yelp", source, out)
        assert report.written == 3 and report.skipped == {"reviews with empty text": 1}
        examples = build_task("sst", {}).read(out)
        assert examples.labels.tolist() == [4, 0, 1]
        assert examples.texts[0] == ['Great tacos. Would "totally" return.', "Cold food.",
                                     "Slow service."]


@pytest.mark.parametrize("row, message", [('"6","Too many stars."', "stars '6'"),
                                          ('"0","Zero."', "stars '0'"),
                                          ('"4"', "got 1 field(s)"),
                                          ('"4","Fine.","extra"', "got 3 field(s)"),
                                          ('"4","An open quote.\n"5","More."',
                                           "malformed quoting"),
                                          ('"4","Never closed.\n5,More.',
                                           "a quote opened on this line is never closed")])
def test_yelp_bad_row_is_an_error_naming_the_line(tmp_path, row, message):
    source = tmp_path / "yelp.csv"
    source.write_text('"4","Fine."\n' + row + "\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        convert("yelp", source, tmp_path / "out.csv")
    assert f"{source}, line 2" in str(error.value) and message in str(error.value)


def test_cli_data_convert(tmp_path, capsys):
    source = tmp_path / "snli.jsonl"
    source.write_text(snli_line(["entailment"]) + "\n", encoding="utf-8")
    assert main(["data", "convert", "snli", str(source), str(tmp_path / "o.csv")]) == 0
    assert "1 rows written" in capsys.readouterr().out
    assert main(["data", "convert", "snli", str(tmp_path / "none.jsonl"),
                 str(tmp_path / "o.csv")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["folder", "source"])
def test_convert_refuses_a_folder_or_its_own_source_as_output(tmp_path, capsys, target):
    source = tmp_path / "snli.jsonl"
    text = snli_line(["entailment"]) + "\n"
    source.write_text(text, encoding="utf-8")
    out = tmp_path if target == "folder" else source
    assert main(["data", "convert", "snli", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert ("is a folder" if target == "folder" else "is the source file") in err
    assert source.read_text(encoding="utf-8") == text and not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------ fetch's conversion
def hub_like(name: str, n: int):
    """A local DatasetDict with the hub dataset's columns and splits (no network)."""
    datasets = pytest.importorskip("datasets")
    source, rng = SOURCES[name], np.random.default_rng(0)
    labels = {"sst": lambda: int(rng.integers(5)), "yelp": lambda: int(rng.integers(5)),
              "quora": lambda: int(rng.integers(2)), "sts": lambda: float(rng.uniform(0, 5)),
              "snli": lambda: int(rng.integers(-1, 3))}[name]
    splits = {}
    for split, _, labelled in source.splits:
        columns = {f: [f"{split} {f} {i} text" for i in range(n)] for f in source.text_fields}
        columns["label"] = [labels() if labelled else -1 for _ in range(n)]
        if source.config:  # GLUE datasets carry an idx column
            columns["idx"] = list(range(n))
        splits[split] = datasets.Dataset.from_dict(columns)
    return datasets.DatasetDict(splits)


def test_fetched_files_are_read_by_the_builtin_tasks(tmp_path):
    for name in ("sst", "quora", "sts"):
        dataset = hub_like(name, 40)
        counts = write_dataset(name, dataset, tmp_path)
        task = build_task(name, {})
        train = task.read(tmp_path / task.train_files[0]) if name != "quora" else \
            task.read(tmp_path / "quora-train.csv")
        assert len(train) == 40
        np.testing.assert_allclose(train.labels, dataset["train"]["label"], atol=1e-3)
        assert len(task.read(tmp_path / task.dev_file)) == 40
        test = task.read(tmp_path / task.test_file, labelled=False)
        assert len(test) == 40 and test.labels is None
        assert sum(counts.values()) >= 120
    subset = build_task("quora", {}).read(tmp_path / "quora-train-subset.csv")
    full = build_task("quora", {}).read(tmp_path / "quora-train.csv")
    assert len(subset) == 4 and set(subset.ids) <= set(full.ids)


def test_fetched_snli_and_yelp(tmp_path):
    snli, said = hub_like("snli", 60), []
    write_dataset("snli", snli, tmp_path, log=said.append)
    examples = build_task("sts", {}).read(tmp_path / "snli-train.csv")
    gold = [label for label in snli["train"]["label"] if label != -1]
    assert len(examples) == len(gold) < 60
    assert said == [f"snli-train.csv: skipped {60 - len(gold)} rows without a gold label "
                    "or with empty text"]
    np.testing.assert_allclose(examples.labels, [{0: 5, 1: 3, 2: 0}[g] for g in gold])
    yelp = hub_like("yelp", 30)
    write_dataset("yelp", yelp, tmp_path)
    examples = build_task("sst", {}).read(tmp_path / "yelp-train.csv")
    assert examples.labels.tolist() == yelp["train"]["label"]


def test_fetch_fails_fast_offline(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cannot reach 127.0.0.1:9.*needs a network"):
        fetch(["sst"], tmp_path, endpoint="http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        fetch(["sst"], tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        fetch(["imdb"], tmp_path)
    assert not any(tmp_path.iterdir())
