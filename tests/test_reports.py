"""`minbert report` on runs trained from small fixtures."""
import csv
import re
import shutil

import numpy as np
import pytest

from minbert import cli
from minbert.build import checked_config
from minbert.analyses import error_bands, near_misses, per_class
from minbert.reports import write_report
from minbert.runs import RunError
from minbert.outputs import read_outputs as load_run_outputs
from minbert.training import train

from helpers import tiny_config_values, write_task_files


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("report-runs")
    data = write_task_files((root / "data").mkdir() or root / "data", repeat=2)
    folders = []
    for name, encoding in (("cross", "cross"), ("bi", "bi")):
        values = tiny_config_values(data, tiny_checkpoint, root / name, epochs=3)
        values["model"]["pair_encoding"] = encoding
        train(checked_config(values))
        folders.append(root / name)
    return folders


@pytest.mark.slow
def test_report_metrics_agree_with_the_runs_predictions(runs, tmp_path):
    run = load_run_outputs(runs[0])
    labels, predictions = run.labels["sst"], run.predictions["sst"]
    write_report(runs, tmp_path / "out")
    import json
    analysis = json.loads((tmp_path / "out" / "cross" / "analysis.json").read_text())
    assert analysis["metrics"]["sst"] == pytest.approx(np.mean(labels == predictions))
    confusion = np.array(analysis["per_class"]["sst"]["confusion"])
    assert confusion.shape == (5, 5) and confusion.sum() == len(labels)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(analysis["metrics"]["sst"])
    confusion = np.array(analysis["per_class"]["quora"]["confusion"])
    assert confusion.sum() == len(run.labels["quora"])
    assert np.trace(confusion) / confusion.sum() == pytest.approx(analysis["metrics"]["quora"])


def test_per_class_scores_on_a_worked_example():
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    result = per_class(labels, predictions, 3)
    # class 0: 1 of 2 predicted right, 1 of 2 found; class 1: 2 of 3, 2 of 2; class 2: none
    assert result["precision"] == pytest.approx([1 / 2, 2 / 3, 0.0])
    assert result["recall"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert result["f1"] == pytest.approx([1 / 2, 0.8, 0.0])
    assert result["support"] == [2, 2, 1]
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


@pytest.mark.slow
def test_the_ablation_table_lists_every_run_and_the_reports_rows(runs, tmp_path):
    write_report(runs, tmp_path / "out")
    with open(tmp_path / "out" / "ablation.csv") as fp:
        rows = list(csv.DictReader(fp))
    names = [r["run"] for r in rows]
    assert names[:2] == ["cross", "bi"]
    assert "Cross-Encoding + PCGrad + SMART 2 (report, bert-base)" in names
    best = next(r for r in rows if r["run"].startswith("Cross-Encoding + PCGrad + SMART 2"))
    assert float(best["overall"]) == pytest.approx(0.748, abs=1e-3)  # the report gives 0.748
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert table.count("\n") == len(rows) + 2


@pytest.mark.slow
def test_the_html_page_embeds_valid_pngs_and_holds_the_runs_numbers(runs, tmp_path):
    index = write_report(runs, tmp_path / "out")
    page = index.read_text()
    import base64
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 2 * 4  # sst, sts distribution, sts scatter, curves per run
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    overall = load_run_outputs(runs[1])
    from minbert.reports import run_metrics
    assert f"{run_metrics(overall)['overall']:.3f}" in page
    for png in (tmp_path / "out").rglob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_sst_near_miss_analysis_counts_one_class_errors():
    labels = np.array([0, 1, 2, 3, 4, 4])
    predictions = np.array([1, 1, 2, 4, 2, 4])
    result = near_misses(labels, predictions, 5)
    assert result["errors"] == 3 and result["one_class_away"] == pytest.approx(2 / 3)
    assert result["accuracy_3"] == pytest.approx(5 / 6)
    assert result["accuracy_2"] == pytest.approx(4 / 5)


def test_error_bands_split_the_gold_range_and_keep_its_top():
    labels = np.array([0.0, 0.5, 1.0, 4.5, 5.0])
    predictions = np.array([1.0, 0.5, 1.0, 4.0, 4.0])
    bands = error_bands(labels, predictions, 0.0, 5.0)
    assert [b["band"] for b in bands] == ["0-1", "1-2", "2-3", "3-4", "4-5"]
    assert [b["count"] for b in bands] == [2, 1, 0, 0, 2]  # 5.0 falls in the last band
    assert bands[0]["mae"] == pytest.approx(0.5) and bands[0]["bias"] == pytest.approx(0.5)
    assert bands[4]["bias"] == pytest.approx(-0.75)


@pytest.mark.slow
def test_a_run_without_its_log_or_predictions_names_what_is_missing(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "predictions" / "sts-dev-output.csv").unlink()
    with pytest.raises(RunError, match="sts-dev-output.csv"):
        load_run_outputs(broken)
    (broken / "log.jsonl").unlink()
    with pytest.raises(RunError, match="missing log.jsonl"):
        load_run_outputs(broken)


@pytest.mark.slow
def test_report_command(runs, tmp_path, capsys):
    assert cli.main(["report", *map(str, runs), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()


@pytest.mark.slow
def test_the_report_gives_each_runs_difference_from_the_first_with_intervals(runs, tmp_path):
    from minbert.compare import compare_runs
    write_report(runs, tmp_path / "out")
    table = (tmp_path / "out" / "differences.md").read_text()
    expected = compare_runs(runs[1], runs[0])  # the same seeded bootstrap
    for row in expected:
        assert f"| bi | {row.name} | {row.difference:+.4f} | [{row.low:+.4f}, " \
               f"{row.high:+.4f}] | {row.verdict} |" in table
    assert (tmp_path / "out" / "differences.png").read_bytes()[:4] == b"\x89PNG"
    assert "Differences from cross" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.slow
def test_runs_of_other_tasks_are_noted_and_left_empty_not_nan(runs, tiny_checkpoint, tmp_path):
    values = tiny_config_values(runs[0].parent / "data", tiny_checkpoint, tmp_path / "sst-only",
                                epochs=1)
    values["data"]["tasks"] = ["sst"]
    train(checked_config(values))
    write_report([runs[0], tmp_path / "sst-only"], tmp_path / "out")
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "Note: sst-only have other tasks than cross" in table and "nan" not in table
    with open(tmp_path / "out" / "ablation.csv") as fp:
        row = next(r for r in csv.DictReader(fp) if r["run"] == "sst-only")
    assert row["quora_acc"] == "" and row["sst_acc"] != ""
    assert "<b>Note:</b> sst-only have other tasks" in (tmp_path / "out" / "index.html").read_text()
