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
the seed-to-seed variance a single pair of runs cannot show. One run (a soup, an
ensemble) against a `--seeds` folder is compared with each of its seeds: the mean of
run − seed, whose interval holds that folder's seed spread (the one run is one draw).

Runs of different tasks (a multi-task run and a single-task specialist) are compared on
the tasks they share; the overall row is the leaderboard's mean over those tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minbert.evaluation import overall_score
from minbert.outputs import read_outputs
from minbert.runs import RunError, RunFolder, seed_runs, specialist_runs
from minbert.seeds import seed_results
from minbert.stats import mean_interval, resampled_metric
from minbert.tasks import Task, build_task, build_tasks


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


def shared_tasks(names_a, names_b, name_a, name_b) -> list[str]:
    """The tasks both sides hold, in A's order; a CompareError where they share none."""
    shared = [name for name in names_a if name in set(names_b)]
    if not shared:
        raise CompareError(f"{name_a} has tasks {list(names_a)}, {name_b} has "
                           f"{list(names_b)}: no task to compare")
    return shared


def _row_names(shared: list[str], names_a, names_b) -> list[str]:
    """The rows of a comparison: the shared tasks and the overall score, except where one
    task of two differing task sets is shared (its overall share would only restate it)."""
    subset = set(names_a) != set(names_b)
    return shared if subset and len(shared) == 1 else [*shared, "overall"]


def check_comparable(run_a, run_b, name_a, name_b, tasks=None) -> None:
    """Two runs' outputs over the same dev examples with the same labels on each of `tasks`
    (default: the tasks they share); else a CompareError naming what differs."""
    for name in tasks or shared_tasks(run_a.tasks, run_b.tasks, name_a, name_b):
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
    """Two run folders' best-model dev predictions, compared on the tasks they share (the
    overall row over those tasks); examples or labels that differ are refused, named."""
    run_a, run_b = read_outputs(folder_a), read_outputs(folder_b)
    tasks = shared_tasks(run_a.tasks, run_b.tasks, folder_a, folder_b)
    check_comparable(run_a, run_b, folder_a, folder_b, tasks)
    rows = compare_predictions({t: run_a.tasks[t] for t in tasks}, run_a.labels,
                               run_a.predictions, run_b.predictions, resamples, seed)
    keep = _row_names(tasks, run_a.tasks, run_b.tasks)
    return [row for row in rows if row.name in keep]


def _seed_tasks(folder, names) -> dict[str, Task]:
    """The Task of each of `names` in a --seeds (or specialists) folder, from its seed runs'
    configs (built-ins by name where the folder keeps only seeds.json): what the overall
    score of a subset of its tasks is computed with."""
    firsts = [found[0] for path in [folder, *specialist_runs(folder).values()]
              if (found := seed_runs(path))]  # one seed run per specialist
    tasks = {}
    for run in firsts:
        tasks.update(build_tasks(RunFolder(run).read_config()))
    try:
        return {name: tasks.get(name) or build_task(name, {}) for name in names}
    except ValueError as e:
        raise CompareError(f"{folder}: no seed run's config to rebuild its tasks from "
                           f"({e})") from None


def _per_seed(folder, tasks: list[str], all_tasks: bool) -> dict[str, dict[str, float]]:
    """Each seed's metrics of `tasks` and the overall score over them (the stored overall
    where the folder holds no other task)."""
    runs = seed_results(folder)
    if all_tasks:
        return {s: {t: m[t] for t in [*tasks, "overall"]} for s, m in runs.items()}
    built = _seed_tasks(folder, tasks)
    return {s: {**{t: m[t] for t in tasks},
                "overall": overall_score({t: m[t] for t in tasks}, built)}
            for s, m in runs.items()}


def _seed_tasks_of(runs: dict[str, dict]) -> list[str]:
    first = next(iter(runs.values()), {})
    return [key for key in first if key != "overall"]


def compare_seed_runs(folder_a, folder_b) -> tuple[list[Difference], list[str]]:
    """Mean of A − B over the seeds both `--seeds` folders hold, with its 95% t-interval,
    on the tasks they share (the overall row over those), and those seeds. The seed runs
    must have been scored on the same dev examples."""
    names = [_seed_tasks_of(seed_results(f)) for f in (folder_a, folder_b)]
    tasks = shared_tasks(*names, folder_a, folder_b)
    runs = [_per_seed(f, tasks, set(n) == set(tasks))
            for f, n in zip((folder_a, folder_b), names)]
    common = sorted(set(runs[0]) & set(runs[1]), key=int)
    if len(common) < 2:
        raise CompareError(f"{folder_a} and {folder_b} share {len(common)} seed(s) "
                           f"({', '.join(common) or 'none'}); a seed comparison needs two")
    _check_seed_examples(folder_a, folder_b, common[0], tasks)
    return _differences([[runs[0][s] for s in common], [runs[1][s] for s in common]],
                        _row_names(tasks, *names)), common


def _seed_outputs(folder, seed: str, tasks):
    """The outputs of one seed of a --seeds or specialists folder on `tasks`, or None where
    its predictions were not kept."""
    specialists = specialist_runs(folder)
    folders = ([Path(specialists[t]) / f"seed-{seed}" for t in tasks if t in specialists]
               if specialists else [Path(folder) / f"seed-{seed}"])
    if not folders or not all((f / "predictions").is_dir() for f in folders):
        return None
    merged = read_outputs(folders[0])
    for extra in folders[1:]:
        part = read_outputs(extra)
        for field_name in ("tasks", "labels", "predictions", "ids"):
            getattr(merged, field_name).update(getattr(part, field_name))
    return merged


def _check_seed_examples(folder_a, folder_b, seed: str, tasks) -> None:
    outputs = [_seed_outputs(f, seed, tasks) for f in (folder_a, folder_b)]
    if all(o is not None for o in outputs):  # their examples, where kept
        check_comparable(*outputs, f"{folder_a} seed {seed}", f"{folder_b} seed {seed}",
                         tasks)


def compare_run_with_seeds(run_folder, seeds_folder,
                           run_is_a: bool = True) -> tuple[list[Difference], list[str]]:
    """One run (a soup, an ensemble, one seed) against every seed of a --seeds or
    specialists folder: the mean over those seeds of run − seed (or seed − run when
    `run_is_a` is False) with its 95% t-interval, on the tasks they share, and those seeds.
    The interval holds the seeds' spread only: the one run is one draw."""
    run = read_outputs(run_folder)
    names = _seed_tasks_of(seed_results(seeds_folder))
    tasks = shared_tasks(list(run.tasks), names, run_folder, seeds_folder)
    per_seed = _per_seed(seeds_folder, tasks, set(names) == set(tasks))
    if len(per_seed) < 2:
        raise CompareError(f"{seeds_folder} holds {len(per_seed)} finished seed(s); a "
                           "comparison across seeds needs two")
    seed = next(iter(per_seed))
    outputs = _seed_outputs(seeds_folder, seed, tasks)
    if outputs is not None:
        check_comparable(run, outputs, run_folder, f"{seeds_folder} seed {seed}", tasks)
    metrics = _run_metrics(run, tasks)
    metrics["overall"] = overall_score(metrics, {t: run.tasks[t] for t in tasks})
    fixed = [metrics] * len(per_seed)
    sides = [fixed, list(per_seed.values())]
    return _differences(sides if run_is_a else sides[::-1],
                        _row_names(tasks, run.tasks, names)), sorted(per_seed, key=int)


def _run_metrics(run, tasks) -> dict[str, float]:
    """A run's dev metrics on `tasks` as its log recorded them (what its seeds' logs give the
    other side; its prediction files are rounded), else recomputed from its predictions."""
    for kind in ("final", "evaluation"):
        try:
            records = RunFolder(run.folder).records(kind)
        except (RunError, OSError):
            records = []
        dev = records[-1].get("dev", {}) if records else {}
        if all(isinstance(dev.get(t), float) for t in tasks):
            return {t: dev[t] for t in tasks}
    return {t: run.tasks[t].metric(run.predictions[t], run.labels[t]) for t in tasks}


def _differences(sides: list[list[dict]], keys: list[str]) -> list[Difference]:
    """Per key: the mean of A and of B and the t-interval of the mean of A − B, pairing the
    i-th entry of each side."""
    rows = []
    for key in keys:
        a = [m[key] for m in sides[0]]
        b = [m[key] for m in sides[1]]
        interval = mean_interval(np.subtract(a, b))
        rows.append(Difference(key, float(np.mean(a)), float(np.mean(b)), interval["low"],
                               interval["high"]))
    return rows


def is_seeds_side(folder) -> bool:
    """Whether compare reads `folder` seed by seed (a --seeds or specialists folder with
    finished seeds) rather than as one run."""
    return bool(seed_results(folder)) and not (Path(folder) / "config.json").is_file()


def compare_folders(folder_a, folder_b, resamples: int = 10_000,
                    seed: int = 0) -> tuple[list[Difference], str]:
    """What `minbert compare` prints: the rows and how their intervals were made. Two runs:
    a paired bootstrap over the dev examples; two --seeds folders: the mean over their
    common seeds; one run and a --seeds folder: the mean over that folder's seeds."""
    seeded = [is_seeds_side(folder_a), is_seeds_side(folder_b)]
    if all(seeded):
        rows, common = compare_seed_runs(folder_a, folder_b)
        how = f"mean over the common seeds ({_seed_list(common)}; t-interval)"
    elif any(seeded):
        run, seeds = (folder_b, folder_a) if seeded[0] else (folder_a, folder_b)
        rows, used = compare_run_with_seeds(run, seeds, run_is_a=not seeded[0])
        how = (f"{run} (one run) against each seed of {seeds} ({_seed_list(used)}): mean "
               "over those seeds (t-interval; the one run's own seed spread is not in it)")
    else:
        rows = compare_runs(folder_a, folder_b, resamples, seed)
        how = f"paired bootstrap over the same dev examples, {resamples:,} resamples"
    return rows, how


def _seed_list(seeds) -> str:
    return f"{len(seeds)} seeds: {', '.join(str(s) for s in seeds)}"


def format_differences(rows: list[Difference], name_a: str, name_b: str, how: str) -> str:
    """The table `minbert compare` prints; `how` says what the intervals are."""
    tasks = [r.name for r in rows if r.name != "overall"]
    lines = [f"A = {name_a}\nB = {name_b}\n{how}, 95% interval of A − B",
             f"{'':<10}{'A':>8}{'B':>8}{'A − B':>9}{'95% interval':>22}  verdict"]
    for r in rows:
        lines.append(f"{r.name:<10}{r.a:>8.4f}{r.b:>8.4f}{r.difference:>+9.4f}"
                     f"{f'[{r.low:+.4f}, {r.high:+.4f}]':>22}  {r.verdict}")
    if len(tasks) < len(rows):
        lines.append(f"(overall: the leaderboard's mean over {', '.join(tasks)})")
    return "\n".join(lines)
