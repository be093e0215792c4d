"""A new sampler, combiner and regulariser are each one module: written here as a file of
their own, imported, and named in a config; the trainer and config module are untouched."""
import importlib.util
import textwrap

import pytest

from minbert.config import ConfigKeyError, build_config
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

        def __init__(self, weight: float = 0.1, total_updates: int = 0):
            self.weight = weight

        def __call__(self, model, task, batch, logits):
            CALLS["term"] += 1
            return self.weight * logits.pow(2).mean()

        def after_step(self, model):
            CALLS["after_step"] += 1
''')


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "my_methods.py"
    path.write_text(MODULE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("my_methods", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_methods_train_when_named_in_the_config(plugin, tiny_checkpoint, tmp_path):
    (tmp_path / "data").mkdir()
    values = tiny_config_values(write_task_files(tmp_path / "data"), tiny_checkpoint,
                                tmp_path / "run", epochs=1, sampler="largest-first",
                                combiner="weighted", combiner_options={"weights": {"sts": 2.0}})
    values["regularizers"] = {"logit-penalty": {"weight": 0.5}}
    metrics = train(build_config(values))
    assert set(metrics) == {"sst", "quora", "sts", "overall"}
    calls = plugin.CALLS
    steps = 2 + 2 + 2  # 8, 6 and 6 examples in batches of 4, one task a step
    assert calls["schedule"] >= 1 and calls["backward"] == steps
    assert calls["term"] == steps and calls["after_step"] == steps


def test_the_new_methods_options_are_checked_from_their_signatures(plugin):
    with pytest.raises(ConfigKeyError, match="weighted takes no option 'weight'; it takes "
                                             "weights"):
        build_config({"train": {"combiner": "weighted", "combiner_options": {"weight": 1}}})
    with pytest.raises(ConfigKeyError, match="regularizers.logit-penalty: logit-penalty takes "
                                             "no option 'lambda'; it takes weight"):
        build_config({"regularizers": {"logit-penalty": {"lambda": 1}}})
    with pytest.raises(ConfigKeyError, match="regularizers = 'l3'; use one of distill, "
                                             "logit-penalty, smart"):
        build_config({"regularizers": {"l3": {}}})
