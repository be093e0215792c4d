"""Paired-bootstrap comparisons: intervals that cover the true difference as often as they
claim, narrower than unpaired ones when the runs agree, and runs that cannot be compared
refused with what differs."""
import numpy as np
import pytest

from minbert import cli
from minbert.compare import compare_predictions
from minbert.stats import resampled_metric
from minbert.tasks import build_task

SST = build_task("sst", {})
STS = build_task("sts", {})


def test_the_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Correctness A: (U_a + H)/2 < 0.60, B: (U_b + H)/2 < 0.55, with H a difficulty both
    runs share (so their errors are correlated); (U + H)/2 has the triangular CDF
    F(z) = 1 − 2(1 − z)² above 0.5, so the true accuracy gap is F(0.60) − F(0.55)."""
    rng = np.random.default_rng(0)

    def cdf(z):
        return 1 - 2 * (1 - z) ** 2
    true = cdf(0.60) - cdf(0.55)
    covered, trials, n = 0, 400, 300
    for trial in range(trials):
        hard = rng.random(n)  # per-example difficulty shared by both runs
        correct_a = rng.random(n) * 0.5 + hard * 0.5 < 0.60
        correct_b = rng.random(n) * 0.5 + hard * 0.5 < 0.55
        labels = np.zeros(n)
        rows = compare_predictions({"sst": SST}, {"sst": labels},
                                   {"sst": np.where(correct_a, 0.0, 1.0)},
                                   {"sst": np.where(correct_b, 0.0, 1.0)},
                                   resamples=1000, seed=trial)
        covered += rows[0].low <= true <= rows[0].high
    assert 0.93 * trials <= covered <= 0.97 * trials


def test_pairing_narrows_the_interval_when_runs_agree():
    rng = np.random.default_rng(1)
    n = 500
    hard = rng.random(n)
    correct_a = rng.random(n) * 0.2 + hard * 0.8 < 0.6
    correct_b = rng.random(n) * 0.2 + hard * 0.8 < 0.55
    labels = np.zeros(n)
    a, b = np.where(correct_a, 0.0, 1.0), np.where(correct_b, 0.0, 1.0)
    paired = compare_predictions({"sst": SST}, {"sst": labels}, {"sst": a}, {"sst": b},
                                 resamples=4000, seed=0)[0]
    # unpaired: each run resampled on its own
    g = np.random.default_rng(0)
    sa = resampled_metric(SST, labels, [a], 4000, g)[0]
    sb = resampled_metric(SST, labels, [b], 4000, g)[0]
    low, high = np.percentile(sa - sb, [2.5, 97.5])
    assert paired.high - paired.low < 0.6 * (high - low)


def test_resampled_pearson_matches_the_metric_on_each_resample():
    rng = np.random.default_rng(2)
    labels = rng.uniform(0, 5, 40)
    predictions = labels + rng.normal(0, 1, 40)
    samples = resampled_metric(STS, labels, [predictions], 5, np.random.default_rng(3))[0]
    idx = np.random.default_rng(3).integers(0, 40, size=(5, 40))
    for value, rows in zip(samples, idx):
        assert value == pytest.approx(np.corrcoef(predictions[rows], labels[rows])[0, 1])


def test_the_overall_interval_combines_the_tasks_like_the_leaderboard():
    rng = np.random.default_rng(4)
    labels = {"sst": rng.integers(0, 5, 200).astype(float), "sts": rng.uniform(0, 5, 150)}
    a = {"sst": labels["sst"].copy(), "sts": labels["sts"] + rng.normal(0, 0.5, 150)}
    b = {"sst": rng.integers(0, 5, 200).astype(float),
         "sts": labels["sts"] + rng.normal(0, 2, 150)}
    rows = compare_predictions({"sst": SST, "sts": STS}, labels, a, b, resamples=2000)
    overall = rows[-1]
    assert overall.name == "overall"
    assert overall.a == pytest.approx((rows[0].a + (rows[1].a + 1) / 2) / 2)
    assert overall.low > 0 and overall.verdict == "A better"


def test_runs_scored_on_different_examples_are_refused(tmp_path, capsys):
    import minbert.compare as compare
    from minbert.outputs import RunOutputs
    tasks = {"sst": SST}

    def fake(ids):
        return RunOutputs("r", tmp_path, tasks, [], [], labels={"sst": np.zeros(len(ids))},
                          predictions={"sst": np.zeros(len(ids))}, ids={"sst": ids})
    runs = {"a": fake(["x1", "x2", "x3"]), "b": fake(["x1", "x2", "x4"])}
    original = compare.read_outputs
    compare.read_outputs = lambda folder: runs[str(folder)]
    try:
        with pytest.raises(ValueError, match=r"only in a: \['x3'\], only in b: \['x4'\]"):
            compare.compare_runs("a", "b")
        assert cli.main(["compare", "a", "b"]) == 2
        assert "different dev examples" in capsys.readouterr().err
    finally:
        compare.read_outputs = original


def test_seed_folders_are_compared_seed_by_seed(tmp_path, capsys):
    import json
    # a holds a fourth seed that b lacks: only the common three count, and the header names them
    for name, overall in (("a", [0.72, 0.73, 0.74, 0.99]), ("b", [0.70, 0.72, 0.71])):
        (tmp_path / name).mkdir()
        runs = {str(s): {"sst": 0.5, "overall": v} for s, v in enumerate(overall)}
        (tmp_path / name / "seeds.json").write_text(json.dumps({"runs": runs}))
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    # differences 0.02, 0.01, 0.03: mean 0.02, s 0.01, t(0.975, 2) = 4.303
    half = 4.302653 * 0.01 / 3 ** 0.5
    assert "mean over the common seeds (3 seeds: 0, 1, 2; t-interval)" in out
    assert f"[{0.02 - half:+.4f}, {0.02 + half:+.4f}]" in out
    line = next(x for x in out.splitlines() if x.startswith("overall"))
    assert "not distinguishable" in line  # +0.02 on average, but three seeds cannot tell


def _fake_runs(tmp_path, runs):
    """compare.read_outputs answering from `runs` (folder name -> {task: (labels, predictions)})."""
    from minbert.outputs import RunOutputs
    tasks = {"sst": SST, "sts": STS}

    def fake(folder):
        parts = runs[str(folder)]
        return RunOutputs(str(folder), tmp_path, {t: tasks[t] for t in parts}, [], [],
                          labels={t: np.asarray(p[0]) for t, p in parts.items()},
                          predictions={t: np.asarray(p[1]) for t, p in parts.items()},
                          ids={t: [f"x{i}" for i in range(len(p[0]))]
                               for t, p in parts.items()})
    return fake


def test_runs_of_different_tasks_are_compared_on_the_tasks_they_share(tmp_path, monkeypatch):
    import minbert.compare as compare
    rng = np.random.default_rng(5)
    sst, sts = rng.integers(0, 5, 60).astype(float), rng.uniform(0, 5, 50)
    runs = {"multi": {"sst": (sst, sst), "sts": (sts, sts + rng.normal(0, 1, 50))},
            "specialist": {"sts": (sts, sts + rng.normal(0, 0.3, 50))},
            "other": {"sst": (sst, sst)}}
    monkeypatch.setattr(compare, "read_outputs", _fake_runs(tmp_path, runs))
    rows = compare.compare_runs("multi", "specialist", resamples=500)
    assert [r.name for r in rows] == ["sts"]  # its overall share would only restate it
    assert rows[0].b == pytest.approx(np.corrcoef(runs["specialist"]["sts"][1], sts)[0, 1])
    assert rows[0].verdict == "B better"  # the specialist's scores are four times less noisy
    with pytest.raises(compare.CompareError, match="no task to compare"):
        compare.compare_runs("specialist", "other")


def test_one_run_is_compared_with_each_seed_of_a_seeds_folder(tmp_path, monkeypatch, capsys):
    import json
    import minbert.compare as compare
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4], dtype=float)
    soup = labels.copy()
    soup[:2] = [4, 4]  # 8 of 10 right
    monkeypatch.setattr(compare, "read_outputs",
                        _fake_runs(tmp_path, {str(tmp_path / "soup"): {"sst": (labels, soup)}}))
    (tmp_path / "seeds").mkdir()
    seeds = {"0": 0.70, "1": 0.74, "2": 0.72}
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps(
        {"runs": {s: {"sst": v, "overall": v} for s, v in seeds.items()}}))
    assert cli.main(["compare", str(tmp_path / "soup"), str(tmp_path / "seeds")]) == 0
    out = capsys.readouterr().out
    # 0.80 − (0.70, 0.74, 0.72): mean +0.08, s 0.02, t(0.975, 2) = 4.303
    half = 4.302653 * 0.02 / 3 ** 0.5
    assert "(one run) against each seed of" in out and "(3 seeds: 0, 1, 2)" in out
    line = next(x for x in out.splitlines() if x.startswith("sst"))
    assert f"[{0.08 - half:+.4f}, {0.08 + half:+.4f}]" in line and "A better" in line
    # the other way round: seed − run
    assert cli.main(["compare", str(tmp_path / "seeds"), str(tmp_path / "soup")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("sst"))
    assert "-0.0800" in line and "B better" in line
