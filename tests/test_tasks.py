"""Each task's loss, prediction, metric and share of the overall score, on worked examples."""
import math

import numpy as np
import pytest
import torch

from minbert.evaluation import overall_score
from minbert.outputs import write_prediction_file as write_predictions
from minbert.tasks import build_task


@pytest.fixture(scope="module")
def tasks():
    return {name: build_task(name, {}) for name in ("sst", "quora", "sts")}


def test_the_overall_score_is_the_leaderboards(tasks):
    metrics = {"sst": 0.5, "quora": 0.8, "sts": 0.6}
    assert overall_score(metrics, tasks) == pytest.approx((0.5 + 0.8 + (0.6 + 1) / 2) / 3)
    assert overall_score({"sst": 0.5}, tasks) == pytest.approx(0.5)  # only tasks scored


def test_five_class_loss_predictions_and_accuracy(tasks):
    sst = tasks["sst"]
    logits = torch.zeros(2, 5)
    assert sst.loss(logits, torch.tensor([0.0, 3.0])).item() == pytest.approx(math.log(5))
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
    assert sst.predict(logits).tolist() == [1, 4]
    assert sst.metric(np.array([1, 4, 2]), np.array([1, 3, 2])) == pytest.approx(2 / 3)
    assert sst.format_prediction(np.float64(4.0)) == "4"
    assert sst.overall_share(0.5) == 0.5 and sst.smart_divergence == "sym-kl"


def test_binary_task_has_one_logit(tasks):
    quora = tasks["quora"]
    assert quora.num_outputs == 1
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    labels = torch.tensor([1.0, 1.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 3
    assert quora.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert quora.predict(logits).tolist() == [0, 1, 0]


def test_regression_maps_a_logit_into_the_score_range(tasks):
    sts = tasks["sts"]
    # a zero logit is the middle of [0, 5]; the loss is BCE against the scaled score
    assert sts.predict(torch.zeros(1, 1)).item() == pytest.approx(2.5)
    assert sts.loss(torch.zeros(1, 1), torch.tensor([2.5])).item() == pytest.approx(math.log(2))
    assert sts.loss(torch.zeros(1, 1), torch.tensor([5.0])).item() == pytest.approx(math.log(2))
    assert sts.metric(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1)
    assert sts.metric(np.array([2.0, 2.0, 2.0]), np.array([1.0, 4.0, 5.0])) == 0.0
    assert sts.overall_share(0.6) == pytest.approx(0.8) and sts.smart_divergence == "squared"
    assert sts.format_prediction(2.5) == "2.5000"


def test_the_similarity_metric_is_scipys_pearson_r(tasks):
    from scipy.stats import pearsonr
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 1500)
    predictions = labels + rng.normal(0, 1.5, 1500)
    assert tasks["sts"].metric(predictions, labels) == pytest.approx(
        pearsonr(predictions, labels)[0], abs=1e-12)


def test_prediction_files_have_the_skeletons_format(tasks, tmp_path):
    path = tmp_path / "sst-dev-output.csv"
    write_predictions(path, tasks["sst"], ["a1", "b2"], np.array([3.0, 0.0]))
    assert path.read_text().splitlines() == ["id \t Predicted_Sentiment ", "a1 , 3 ", "b2 , 0 "]
    write_predictions(path, tasks["sts"], ["c3"], np.array([4.25]))
    assert path.read_text().splitlines()[1] == "c3 , 4.2500 "


def test_tasks_declare_their_report_analyses(tasks):
    assert tasks["sst"].analyses == ("per_class", "near_misses", "distribution")
    assert tasks["quora"].analyses == ("per_class",)
    assert tasks["sts"].analyses == ("bands", "distribution", "scatter")


def test_label_smoothing_spreads_the_target_evenly_or_by_closeness():
    even = build_task("sst", {"label_smoothing": 0.2})
    targets = even.soft_targets(torch.tensor([0, 2]))
    assert targets.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert targets[1].tolist() == pytest.approx([0.05, 0.05, 0.8, 0.05, 0.05])
    close = build_task("sst", {"label_smoothing": 0.2, "ordinal_smoothing": True})
    row = close.soft_targets(torch.tensor([0]))[0]
    weights = np.exp(-np.arange(1, 5)) / np.exp(-np.arange(1, 5)).sum()
    assert row.tolist() == pytest.approx([0.8, *(0.2 * weights)])
    logits = torch.randn(3, 5)
    labels = torch.tensor([1.0, 4.0, 0.0])
    expected = -(close.soft_targets(labels.long()) * torch.log_softmax(logits, -1)).sum(-1)
    assert close.loss(logits, labels).item() == pytest.approx(expected.mean().item(), rel=1e-6)
    assert build_task("sst", {}).loss(logits, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels.long()).item())
    quora = build_task("quora", {"label_smoothing": 0.1})  # binary: targets 0.05 / 0.95
    logit = torch.tensor([[0.3]])
    assert quora.loss(logit, torch.tensor([1.0])).item() == pytest.approx(
        -(0.95 * math.log(torch.sigmoid(logit).item())
          + 0.05 * math.log(1 - torch.sigmoid(logit).item())))


@pytest.mark.parametrize("options, message", [
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"label_smoothing": "a"}, "label_smoothing"),
    ({"ordinal_smoothing": 1}, "ordinal_smoothing")])
def test_bad_smoothing_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build_task("sst", options)
    with pytest.raises(ValueError, match="needs ordered classes"):
        build_task("quora", {"ordinal_smoothing": True, "label_smoothing": 0.1})
