"""Each sampler's schedule, and the epoch plans built on it."""
from collections import Counter

import numpy as np
import pytest

from minbert.data import EncodedTask, Examples
from minbert.samplers import make_sampler, plan_epoch
from minbert.tokenizer import Tokenizer

COUNTS = {"sst": 7, "quora": 20, "sts": 3}


def test_round_robin_takes_one_batch_of_every_task_with_data_left():
    schedule = make_sampler("round-robin").schedule(COUNTS, np.random.default_rng(0))
    assert len(schedule) == 20
    assert schedule[0] == ["sst", "quora", "sts"]
    assert schedule[5] == ["sst", "quora"] and schedule[10] == ["quora"]
    assert Counter(t for step in schedule for t in step) == COUNTS


def test_interleaved_spreads_each_task_evenly_and_leaves_no_task_alone_at_the_end():
    schedule = make_sampler("interleaved").schedule(COUNTS, np.random.default_rng(0))
    assert len(schedule) == 20 and all(schedule)  # as long as round-robin, no empty step
    assert Counter(t for step in schedule for t in step) == COUNTS
    assert all("quora" in step for step in schedule)
    assert [i for i, step in enumerate(schedule) if "sts" in step] == [0, 6, 13]
    gaps = np.diff([i for i, step in enumerate(schedule) if "sst" in step])
    assert set(gaps) <= {2, 3}  # 20 steps / 7 batches: every second or third step
    # round-robin's last 13 steps are Quora alone; here every task is in the last third
    assert {t for step in schedule[-7:] for t in step} == set(COUNTS)


@pytest.mark.parametrize("name", ["sequential", "proportional"])
def test_one_task_per_step_samplers_use_every_batch_once(name):
    schedule = make_sampler(name).schedule(COUNTS, np.random.default_rng(0))
    assert all(len(step) == 1 for step in schedule)
    assert Counter(step[0] for step in schedule) == COUNTS
    if name == "sequential":
        assert [s[0] for s in schedule[:7]] == ["sst"] * 7


def test_temperature_flattens_task_proportions():
    counts = {"big": 900, "small": 100}
    rng = np.random.default_rng(0)
    draws = Counter(s[0] for s in make_sampler("temperature", 2.0).schedule(counts, rng))
    expected_small = 1000 * 100 ** 0.5 / (900 ** 0.5 + 100 ** 0.5)  # 250
    assert abs(draws["small"] - expected_small) < 50
    uniform = Counter(s[0] for s in make_sampler("temperature", 1e6).schedule(counts, rng))
    assert abs(uniform["small"] - 500) < 60


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="train.sampler"):
        make_sampler("random-walk")


@pytest.fixture
def encoded(tiny_checkpoint):
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)

    def task(name, n):
        return EncodedTask(name, Examples([f"{name}{i}" for i in range(n)],
                                          [["the movie is good"] * n], np.zeros(n)),
                           tokenizer, "single")
    return {"a": task("a", 50), "b": task("b", 13)}


@pytest.mark.parametrize("name", ["round-robin", "interleaved"])
def test_every_batch_once_plans_cover_every_example_of_every_task_once(encoded, name):
    plan = plan_epoch(encoded, 4, make_sampler(name), seed=0, epoch=0)
    seen = {"a": [], "b": []}
    for step in plan:
        for name, indices in step:
            seen[name] += indices.tolist()
    assert sorted(seen["a"]) == list(range(50)) and sorted(seen["b"]) == list(range(13))


def test_plans_are_deterministic_per_seed_and_epoch(encoded):
    def flat(seed, epoch):
        return [(n, i.tolist()) for step in plan_epoch(encoded, 4, make_sampler("proportional"),
                                                      seed, epoch) for n, i in step]
    assert flat(0, 0) == flat(0, 0)
    assert flat(0, 0) != flat(0, 1) and flat(0, 0) != flat(1, 0)


def test_temperature_plan_cycles_small_tasks(encoded):
    plan = plan_epoch(encoded, 4, make_sampler("temperature", 100.0), seed=0, epoch=0)
    b_batches = [i for step in plan for n, i in step if n == "b"]
    assert len(b_batches) > 4  # more than one pass over b's 4 batches
    first_pass = np.concatenate(b_batches[:4])
    assert sorted(first_pass.tolist()) == list(range(13))


@pytest.mark.parametrize("name", ["round-robin", "proportional", "interleaved"])
def test_a_tasks_share_of_an_epoch_keeps_the_first_of_its_batches(encoded, name):
    """Per-task budgets (tasks.X.epochs): share ½ keeps the first half of the task's shuffled
    batches (rounded up) in the same order, share 0 leaves the task out."""
    sampler = make_sampler(name)

    def batches(shares, task):
        return [i.tolist() for step in plan_epoch(encoded, 4, sampler, 0, 1, shares)
                for n, i in step if n == task]
    whole = batches(None, "a")
    assert batches({"a": 1.0}, "a") == whole
    assert len(whole) == 13 and batches({"a": 0.5}, "a") == whole[:7]  # 13 batches: 7
    assert batches({"a": 0.0}, "a") == [] and batches({"a": 0.0}, "b")


def test_a_task_with_share_0_is_never_drawn_by_the_temperature_sampler(encoded):
    plan = plan_epoch(encoded, 4, make_sampler("temperature", 100.0), 0, 0, {"b": 0.0})
    assert plan and all(n == "a" for step in plan for n, _ in step)
