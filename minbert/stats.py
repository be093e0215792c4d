"""Uncertainty of the numbers a comparison reports: paired bootstrap resamples of a task's
metric over the same examples, and the t-interval of a mean across seeds."""
from __future__ import annotations

import numpy as np

from minbert.tasks import Task

MAX_RESAMPLES = 1_000_000


def _chunks(n: int, resamples: int, rng: np.random.Generator, budget: int = 4_000_000):
    """Index arrays (chunk, n) drawn with replacement, about `budget` indices at a time."""
    size = max(1, budget // max(n, 1))
    for start in range(0, resamples, size):
        yield rng.integers(0, n, size=(min(size, resamples - start), n))


def resampled_metric(task: Task, labels: np.ndarray, predictions: list[np.ndarray],
                     resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(len(predictions), resamples) metric values, every prediction set resampled with the
    same example indices; the task computes its metric on each resample."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples = {resamples}: give 1 to {MAX_RESAMPLES:,}")
    labels = np.asarray(labels, dtype=np.float64)
    predictions = [np.asarray(p, dtype=np.float64) for p in predictions]
    out = np.empty((len(predictions), resamples))
    done = 0
    for idx in _chunks(len(labels), resamples, rng):
        y = labels[idx]
        for row, p in enumerate(predictions):
            out[row, done:done + len(idx)] = task.resampled_metric(p[idx], y)
        done += len(idx)
    return out


def mean_interval(values, level: float = 0.95) -> dict:
    """Mean, sample standard deviation and the t-interval of the mean of `values` (one per
    seed); with one value there is no interval (nan)."""
    from scipy.stats import t
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "std": float("nan"), "low": float("nan"), "high": float("nan"),
                "n": n}
    std = float(values.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": n}
