"""Which task(s) each training step draws a batch from.

A sampler turns each task's number of batches in an epoch into a schedule: a list of
steps, each a list of task names (round-robin puts one batch of every task still holding
data into a step, interleaved spreads each task's batches evenly over the steps; the
others one batch per step). `plan_epoch` then attaches the batches.
An epoch's plan depends only on (seed, epoch), so a resumed run replays it exactly.
"""
from __future__ import annotations

import math

import numpy as np

from minbert.data import EncodedTask
from minbert.registry import Registry

SAMPLERS = Registry("sampler", "train.sampler")


class Sampler:
    """A new sampler is a subclass registered with @SAMPLERS.register; a constructor
    argument named `temperature` receives train.temperature."""
    name = ""

    def schedule(self, counts: dict[str, int], rng: np.random.Generator) -> list[list[str]]:
        raise NotImplementedError


@SAMPLERS.register
class SequentialSampler(Sampler):
    """Each task's whole epoch in turn (the CS224N skeleton's baseline)."""
    name = "sequential"

    def schedule(self, counts, rng):
        return [[task] for task, n in counts.items() for _ in range(n)]


@SAMPLERS.register
class RoundRobinSampler(Sampler):
    """Each step one batch of every task that still has data (the report's PCGrad loop)."""
    name = "round-robin"

    def schedule(self, counts, rng):
        return [[task for task, n in counts.items() if step < n]
                for step in range(max(counts.values()))]


@SAMPLERS.register
class InterleavedSampler(Sampler):
    """Round-robin with each task's batches spread evenly over the epoch: the largest task
    is in every step, a task with half as many batches in every second one, and so on.
    Every batch once, as round-robin, but no task trains alone at the end of the epoch
    (under round-robin the largest task does, for all the steps the others lack)."""
    name = "interleaved"

    def schedule(self, counts, rng):
        steps = max(counts.values())
        schedule = [[] for _ in range(steps)]
        for task, n in counts.items():
            for k in range(n):
                schedule[k * steps // n].append(task)
        return schedule


@SAMPLERS.register
class ProportionalSampler(Sampler):
    """One batch a step, tasks drawn in proportion to their size: every batch once."""
    name = "proportional"

    def schedule(self, counts, rng):
        order = np.repeat(np.arange(len(counts)), list(counts.values()))
        names = list(counts)
        return [[names[i]] for i in rng.permutation(order)]


@SAMPLERS.register
class TemperatureSampler(Sampler):
    """One batch a step, task t drawn with p ∝ n_t^(1/T) (MT-DNN, jiant). T = 1 is
    proportional, large T uniform; small tasks cycle, large ones are cut short."""
    name = "temperature"

    def __init__(self, temperature: float = 2.0):
        if temperature <= 0:
            raise ValueError(f"train.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def schedule(self, counts, rng):
        weights = np.array(list(counts.values()), dtype=np.float64) ** (1.0 / self.temperature)
        names = list(counts)
        draws = rng.choice(len(names), size=sum(counts.values()), p=weights / weights.sum())
        return [[names[i]] for i in draws]


def make_sampler(name: str, temperature: float = 2.0) -> Sampler:
    return SAMPLERS.build(name, temperature=temperature)


def plan_epoch(tasks: dict[str, EncodedTask], batch_size: int, sampler: Sampler, seed: int,
               epoch: int, shares: dict[str, float] | None = None
               ) -> list[list[tuple[str, np.ndarray]]]:
    """The steps of one epoch, each a list of (task, example indices). `shares`: each
    task's share of its batches in this epoch (a per-task budget, `tasks.X.epochs`); a
    task with share 0 is left out, one with ½ draws the first half of its shuffled
    batches; the rest keep every batch."""
    batches = {name: [] for name in tasks}

    def next_batch(name: str, occurrence: int) -> np.ndarray:
        while occurrence >= len(batches[name]):  # a new pass over the task's data
            cycle = len(batches[name]) // max(1, -(-len(tasks[name]) // batch_size))
            rng = np.random.default_rng([seed, epoch, list(tasks).index(name), cycle])
            batches[name] += tasks[name].bucketed_batches(batch_size, rng)
        return batches[name][occurrence]

    shares = shares or {}
    counts = {name: math.ceil(-(-len(t) // batch_size) * shares.get(name, 1.0))
              for name, t in tasks.items()}
    counts = {name: n for name, n in counts.items() if n > 0}
    schedule = sampler.schedule(counts, np.random.default_rng([seed, epoch, 1 << 20]))
    seen = dict.fromkeys(tasks, 0)
    steps = []
    for step in schedule:
        steps.append([])
        for name in step:
            steps[-1].append((name, next_batch(name, seen[name])))
            seen[name] += 1
    return steps
