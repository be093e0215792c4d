"""A new sampler, combiner, regulariser and task kind are each one module: written here as
a file of their own, imported, and named in a config; no module of minbert changes."""
import importlib.util
import json
import textwrap

import numpy as np
import pytest

import minbert
from minbert import cli
from minbert.build import checked_config
from minbert.config import ConfigKeyError
from minbert.training import train

from helpers import tiny_config_values, write_task_files

MODULE = textwrap.dedent('''
    """One user module: a sampler, a combiner and a regulariser, registered by name."""
    import torch

    from minbert.combiners import COMBINERS, Combiner
    from minbert.regularizers import REGULARIZERS, Regularizer
    from minbert.samplers import SAMPLERS, Sampler

    CALLS = {"schedule": 0, "backward": 0, "term": 0, "after_step": 0}


    @SAMPLERS.register
    class LargestFirst(Sampler):
        """Every batch of the largest task first, then the others."""
        name = "largest-first"

        def schedule(self, counts, rng):
            CALLS["schedule"] += 1
            order = sorted(counts, key=counts.get, reverse=True)
            return [[task] for task in order for _ in range(counts[task])]


    @COMBINERS.register
    class Weighted(Combiner):
        """Task losses scaled by fixed weights (no seed: it has no randomness)."""
        name = "weighted"

        def __init__(self, weights: dict | None = None):
            self.weights = weights or {}

        def backward(self, losses, model):
            CALLS["backward"] += 1
            sum(self.weights.get(t, 1.0) * loss for t, loss in losses.items()).backward()


    @REGULARIZERS.register
    class LogitPenalty(Regularizer):
        """λ · mean squared logit."""
        name = "logit-penalty"

        def __init__(self, weight: float = 0.1):
            self.weight = weight

        def __call__(self, model, task, batch, logits):
            CALLS["term"] += 1
            return self.weight * logits.pow(2).mean()

        def after_step(self, model):
            CALLS["after_step"] += 1
''')


TASK_KIND = textwrap.dedent('''
    """A task kind of its own: K ordered classes predicted from K - 1 cumulative logits
    (logit k says P(y > k)), scored by closeness, 1 - mean |error| / (K - 1)."""
    from dataclasses import dataclass

    import numpy as np
    import torch
    import torch.nn.functional as F

    from minbert.tasks import KINDS, Task


    @KINDS.register
    @dataclass
    class OrdinalTask(Task):
        kind = "cumulative-ordinal"
        num_classes: int = 3
        metric_name = "closeness"
        metric_abbreviation = "close"
        analyses = ("per_class", "distribution")

        @property
        def classes(self):
            return list(range(self.num_classes))

        @property
        def num_outputs(self):
            return self.num_classes - 1

        def parse_label(self, raw):
            value = float(raw)
            if value not in self.classes:
                raise ValueError(f"label {raw!r} is not a class in 0..{self.num_classes - 1}")
            return value

        def strata(self, labels):
            return np.asarray(labels).astype(int)

        def loss(self, logits, labels):
            above = labels[:, None] > torch.arange(self.num_outputs, device=labels.device)
            return F.binary_cross_entropy_with_logits(logits, above.float())

        def predict(self, logits):
            return (logits > 0).sum(-1)

        def probabilities(self, logits):
            above = torch.sigmoid(logits)                       # P(y > k), (batch, K - 1)
            ones = torch.ones_like(above[:, :1])
            cumulative = torch.cat([ones, above, 0 * ones], -1)  # P(y > k - 1), k = 0..K
            p = (cumulative[:, :-1] - cumulative[:, 1:]).clamp_min(0)
            return p / p.sum(-1, keepdim=True)

        def mean_logits(self, logits):
            p = torch.stack([torch.sigmoid(x) for x in logits]).mean(0).clamp(1e-6, 1 - 1e-6)
            return torch.log(p) - torch.log1p(-p)

        def metric(self, predictions, labels):
            error = np.abs(np.asarray(predictions) - np.asarray(labels))
            return float(1 - error.mean() / (self.num_classes - 1))

        def divergence(self, logits, target, kind):
            return (torch.sigmoid(logits) - torch.sigmoid(target)).pow(2).sum(-1).mean()

        def format_prediction(self, value):
            return str(int(value))
''')


def _import(folder, name: str, text: str):
    path = folder / f"{name}.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return _import(tmp_path_factory.mktemp("plugin"), "my_methods", MODULE)


@pytest.fixture(scope="module")
def task_kind(tmp_path_factory):
    return _import(tmp_path_factory.mktemp("plugin"), "my_task_kind", TASK_KIND)


def test_new_methods_train_when_named_in_the_config(plugin, tiny_checkpoint, tmp_path):
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run", epochs=1, sampler="largest-first",
                                combiner="weighted", combiner_options={"weights": {"sts": 2.0}})
    values["regularizers"] = {"logit-penalty": {"weight": 0.5}}
    metrics = train(checked_config(values))
    assert set(metrics) == {"sst", "quora", "sts", "overall"}
    calls = plugin.CALLS
    steps = 2 + 2 + 2  # 8, 6 and 6 examples in batches of 4, one task a step
    assert calls["schedule"] >= 1 and calls["backward"] == steps
    assert calls["term"] == steps and calls["after_step"] == steps


def test_the_new_methods_options_are_checked_from_their_signatures(plugin):
    with pytest.raises(ConfigKeyError, match="weighted takes no option 'weight'; it takes "
                                             "weights"):
        checked_config({"train": {"combiner": "weighted", "combiner_options": {"weight": 1}}})
    with pytest.raises(ConfigKeyError, match="regularizers.logit-penalty: logit-penalty takes "
                                             "no option 'lambda'; it takes weight"):
        checked_config({"regularizers": {"logit-penalty": {"lambda": 1}}})
    with pytest.raises(ConfigKeyError, match="regularizers = 'l3'; use one of anchor, distill, "
                                             "logit-penalty, smart"):
        checked_config({"regularizers": {"l3": {}}})


@pytest.mark.slow
def test_a_new_task_kind_trains_evaluates_predicts_compares_and_reports(
        task_kind, tiny_checkpoint, tmp_path, capsys):
    """A rating task of a kind defined in its own module goes through every command; no
    module of minbert knows its metric, its outputs or its figures."""
    data = write_task_files((tmp_path / "data").mkdir() or tmp_path / "data", repeat=2)
    ratings = [("the movie is good", 2), ("a great movie", 2), ("the movie is bad", 0),
               ("an awful movie", 0), ("the movie is not good", 1), ("a movie", 1)] * 2
    rows = "".join(f"{i}\tr{i}\t{text}\t{label}\n" for i, (text, label) in enumerate(ratings))
    for split in ("train", "dev"):
        (data / f"rating-{split}.csv").write_text("\tid\tsentence\trating\n" + rows)
    runs, results = [], []
    for seed in (0, 1):
        values = tiny_config_values(data, tiny_checkpoint, tmp_path / f"run-{seed}", epochs=2,
                                    seed=seed)
        values["data"]["tasks"] = ["sst", "rating"]
        values["tasks"]["rating"] = {"kind": "cumulative-ordinal", "num_classes": 3,
                                     "text_columns": ["sentence"], "label_column": "rating",
                                     "train_files": ["rating-train.csv"],
                                     "dev_file": "rating-dev.csv"}
        metrics = train(checked_config(values))
        assert 0 <= metrics["rating"] <= 1
        assert metrics["overall"] == pytest.approx((metrics["sst"] + metrics["rating"]) / 2)
        runs.append(str(tmp_path / f"run-{seed}"))
        results.append(metrics)

    assert cli.main(["evaluate", runs[0]]) == 0
    evaluated = json.loads((tmp_path / "run-0" / "dev-metrics.json").read_text())
    assert evaluated["rating"] == pytest.approx(results[0]["rating"])
    assert "closeness" in capsys.readouterr().out

    model = minbert.load(runs)  # an ensemble of the two runs, through the task's mean_logits
    answer = model.predict("rating", ["the movie is good", "an awful movie", "a movie"])
    assert set(answer.labels) <= {0, 1, 2} and answer.probabilities.shape == (3, 3)
    assert np.allclose(answer.probabilities.sum(1), 1)
    alone = minbert.load(runs[0]).predict("rating", [text for text, _ in ratings])
    labels = np.array([label for _, label in ratings])
    assert 1 - np.abs(alone.labels - labels).mean() / 2 == pytest.approx(evaluated["rating"])

    assert cli.main(["compare", *runs]) == 0
    table = capsys.readouterr().out
    assert "\nrating " in table and "\noverall " in table

    assert cli.main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    analysis = json.loads((tmp_path / "report" / "run-0" / "analysis.json").read_text())
    assert np.array(analysis["per_class"]["rating"]["confusion"]).sum() == len(ratings)
    assert (tmp_path / "report" / "run-0" / "rating-distribution.png").stat().st_size > 1000
    assert "rating_close" in (tmp_path / "report" / "ablation.csv").read_text()
