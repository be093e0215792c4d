"""Differences between two runs with their uncertainty: a paired bootstrap over the same
dev examples.

Both runs' predictions for the same examples are resampled together (one draw of example
indices serves both), so what the examples have in common (an easy sentence both get
right) cancels and the interval is that of the *difference*, narrower than two separate
intervals would suggest. Each task is resampled on its own; the overall score of a
resample combines the tasks' resampled metrics the way the leaderboard does. Percentile
intervals, seeded, vectorised in chunks of resamples.

    minbert compare RUN_A RUN_B [--resamples 10000] [--seed 0]

Two folders of `--seeds` runs (seeds.json, or seed-N/ runs with a final record, as
several processes training one seed each leave them) are compared seed by seed instead:
the mean over their common seeds of A − B, with the t-interval of that mean, which holds
the seed-to-seed variance a single pair of runs cannot show.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minbert.evaluation import overall_score
from minbert.outputs import read_outputs
from minbert.seeds import seed_results
from minbert.stats import mean_interval, resampled_metric
from minbert.tasks import Task


class CompareError(ValueError):
    """Runs that cannot be compared; the message says why (tasks or example ids)."""


@dataclass
class Difference:
    name: str        # a task or "overall"
    a: float
    b: float
    low: float       # 95% interval of a − b
    high: float

    @property
    def difference(self) -> float:
        return self.a - self.b

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "not distinguishable"


def compare_predictions(tasks: dict[str, Task], labels: dict[str, np.ndarray],
                        a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                        resamples: int = 10_000, seed: int = 0,
                        level: float = 0.95) -> list[Difference]:
    """Per task and overall: A's and B's metric and the paired-bootstrap interval of A − B."""
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    rows, shares_a, shares_b = [], [], []
    for name, task in tasks.items():
        samples = resampled_metric(task, labels[name], [a[name], b[name]], resamples, rng)
        low, high = np.percentile(samples[0] - samples[1], [tail, 100 - tail])
        rows.append(Difference(name, task.metric(a[name], labels[name]),
                               task.metric(b[name], labels[name]), float(low), float(high)))
        shares_a.append(task.overall_share(samples[0]))
        shares_b.append(task.overall_share(samples[1]))
    overall = np.mean(shares_a, 0) - np.mean(shares_b, 0)
    low, high = np.percentile(overall, [tail, 100 - tail])
    a_metrics = {r.name: r.a for r in rows}
    b_metrics = {r.name: r.b for r in rows}
    rows.append(Difference("overall", overall_score(a_metrics, tasks),
                           overall_score(b_metrics, tasks), float(low), float(high)))
    return rows


def check_comparable(run_a, run_b, name_a, name_b) -> None:
    """Two runs' outputs over the same tasks and dev examples with the same labels; else a
    CompareError naming what differs."""
    if set(run_a.tasks) != set(run_b.tasks):
        raise CompareError(f"{name_a} has tasks {list(run_a.tasks)}, {name_b} has "
                           f"{list(run_b.tasks)}; compare runs of the same tasks")
    for name in run_a.tasks:
        ids_a, ids_b = run_a.ids[name], run_b.ids[name]
        if ids_a != ids_b:
            only_a = sorted(set(ids_a) - set(ids_b))
            only_b = sorted(set(ids_b) - set(ids_a))
            raise CompareError(
                f"{name}: the runs were scored on different dev examples ({len(ids_a)} vs "
                f"{len(ids_b)}; only in {name_a}: {only_a[:5]}, only in {name_b}: "
                f"{only_b[:5]}); compare runs scored on the same dev files and dev_limit")
        if not np.array_equal(run_a.labels[name], run_b.labels[name]):
            raise CompareError(f"{name}: the same ids carry different gold labels in the two "
                               "runs' dev files")


def compare_runs(folder_a, folder_b, resamples: int = 10_000, seed: int = 0) -> list[Difference]:
    """Two run folders' best-model dev predictions, compared on the examples they share;
    runs with other tasks or other example ids are refused with the difference named."""
    run_a, run_b = read_outputs(folder_a), read_outputs(folder_b)
    check_comparable(run_a, run_b, folder_a, folder_b)
    return compare_predictions(run_a.tasks, run_a.labels, run_a.predictions, run_b.predictions,
                               resamples, seed)


def compare_seed_runs(folder_a, folder_b) -> list[Difference]:
    """Mean of A − B over the seeds both `--seeds` folders hold, with its 95% t-interval.
    The folders must hold runs of the same tasks, scored on the same dev examples."""
    runs = [seed_results(folder_a), seed_results(folder_b)]
    common = sorted(set(runs[0]) & set(runs[1]), key=int)
    if len(common) < 2:
        raise CompareError(f"{folder_a} and {folder_b} share {len(common)} seed(s) "
                           f"({', '.join(common) or 'none'}); a seed comparison needs two")
    keys = [list(runs[i][common[0]]) for i in (0, 1)]
    if set(keys[0]) != set(keys[1]):
        raise CompareError(f"{folder_a} has {keys[0]}, {folder_b} has {keys[1]}; compare "
                           "seeds of runs with the same tasks")
    folders = [Path(folder_a) / f"seed-{common[0]}", Path(folder_b) / f"seed-{common[0]}"]
    if all((f / "predictions").is_dir() for f in folders):  # their examples, where kept
        check_comparable(read_outputs(folders[0]), read_outputs(folders[1]), *folders)
    rows = []
    for key in keys[0]:
        a = [runs[0][s][key] for s in common]
        b = [runs[1][s][key] for s in common]
        interval = mean_interval(np.subtract(a, b))
        rows.append(Difference(key, float(np.mean(a)), float(np.mean(b)), interval["low"],
                               interval["high"]))
    return rows


def format_differences(rows: list[Difference], name_a: str, name_b: str,
                       resamples: int) -> str:
    """The table `minbert compare` prints; `resamples` 0 for a comparison across seeds."""
    how = (f"paired bootstrap over the same dev examples, {resamples:,} resamples"
           if resamples else "mean over the common seeds (t-interval)")
    lines = [f"A = {name_a}\nB = {name_b}\n{how}, 95% interval of A − B",
             f"{'':<10}{'A':>8}{'B':>8}{'A − B':>9}{'95% interval':>22}  verdict"]
    for r in rows:
        lines.append(f"{r.name:<10}{r.a:>8.4f}{r.b:>8.4f}{r.difference:>+9.4f}"
                     f"{f'[{r.low:+.4f}, {r.high:+.4f}]':>22}  {r.verdict}")
    return "\n".join(lines)
