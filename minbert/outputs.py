"""What a finished run (or an evaluation) produced, read from its files alone: its dev
predictions in the leaderboard's format beside the gold labels, its log's epochs and
steps (`RunOutputs`), for reports and comparisons; and the evaluation folder that
`minbert evaluate --out` writes in the same shape. A folder of specialists reads as their
outputs together, one task from each."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minbert.runs import RunError, RunFolder, specialist_runs, write_text_atomic
from minbert.tasks import Task, build_tasks, read_split


# ---------------------------------------------------------------------- prediction files
def prediction_file(folder: str | Path, task: Task, split: str) -> Path:
    """Where a task's leaderboard file for `split` lives in `folder`."""
    return Path(folder) / f"{task.output_prefix}-{split}-output.csv"


def write_prediction_file(path: str | Path, task: Task, ids: list[str], predictions) -> None:
    """The skeleton's format: a header `id \\t Predicted_...`, then `id , prediction` rows;
    written atomically (a kill or a full disk leaves the previous file whole)."""
    lines = [f"id \t {task.prediction_header} \n"]
    lines += [f"{example_id} , {task.format_prediction(value)} \n"
              for example_id, value in zip(ids, predictions)]
    write_text_atomic(Path(path), "".join(lines))


def read_prediction_file(path: str | Path) -> dict[str, float]:
    """id -> prediction of a leaderboard file; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = {}
    for number, line in enumerate(lines, start=2):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise RunError(f"{path}, line {number}: expected 'id , prediction'")
        try:
            out[parts[0]] = float(parts[1])
        except ValueError:
            out[parts[0]] = math.nan
        if not math.isfinite(out[parts[0]]):
            raise RunError(f"{path}, line {number}: {parts[1]!r} is not a finite number")
    return out


# ---------------------------------------------------------------------- what a run produced
@dataclass
class RunOutputs:
    """A finished run's tasks, log and best model's dev predictions beside the gold labels,
    for reports and comparisons (`minbert.loading.load_run` loads its model instead)."""
    name: str
    folder: Path
    tasks: dict[str, Task]
    epochs: list[dict]
    steps: list[dict]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)  # the dev examples scored


def read_outputs(folder: str | Path) -> RunOutputs:
    """What the run (or evaluation) in `folder` produced, read from its files alone; for a
    folder of specialists, their outputs together (one task from each)."""
    specialists = specialist_runs(folder)
    if specialists:
        parts = [read_outputs(path) for path in specialists.values()]
        merged = RunOutputs(Path(folder).name, Path(folder), {}, [], [])
        for name, part in zip(specialists, parts):
            if list(part.tasks) != [name]:
                raise RunError(f"{part.folder}: a specialist of {name} holds tasks "
                               f"{list(part.tasks)}")
            for field_name in ("tasks", "labels", "predictions", "ids"):
                getattr(merged, field_name).update(getattr(part, field_name))
        return merged
    run = RunFolder(folder)
    for needed in (run.config_file, run.log_file):
        if not needed.is_file():
            raise RunError(f"{run.path}: missing {needed.name}; is this a run folder written "
                           "by `minbert train` or `minbert evaluate --out`?")
    config = run.read_config()
    tasks = build_tasks(config)
    outputs = RunOutputs(run.path.name, run.path, tasks, run.records("epoch"),
                         run.records("step"))
    for name, task in tasks.items():
        path = prediction_file(run.predictions, task, "dev")
        if not path.is_file():
            raise RunError(f"{run.path}: missing predictions/{path.name}; score the run "
                           f"with `minbert evaluate {run.path} --out DIR` and use DIR")
        predicted = read_prediction_file(path)
        examples = read_split(config, task, "dev")  # what the run scored (dev_limit)
        if len(predicted) < len(examples):
            raise RunError(f"{path}: holds {len(predicted)} of the {len(examples)} dev "
                           "predictions the run made (a write cut short?); score the run "
                           f"again with `minbert evaluate {run.path} --out DIR`")
        keep = [i for i, example_id in enumerate(examples.ids) if example_id in predicted]
        outputs.ids[name] = [examples.ids[i] for i in keep]
        outputs.labels[name] = examples.labels[keep]
        outputs.predictions[name] = np.array([predicted[examples.ids[i]] for i in keep])
        unknown = sorted(set(outputs.predictions[name]) - set(task.classes or ())) \
            if task.classes is not None else []
        if unknown:
            raise RunError(f"{path}: predicts class {unknown[0]:g}, not one of {name}'s "
                           f"classes {task.classes}")
    return outputs


def write_evaluation(out: str | Path, config: dict, record: dict, tasks: dict[str, Task],
                     predictions: dict[str, tuple[list[str], np.ndarray]]) -> RunFolder:
    """An evaluation folder that `compare` and `report` read like a run's: the config, one
    "evaluation" `record` as its log, dev-metrics.json and the dev prediction files."""
    folder = RunFolder(out)
    folder.write_config(config)
    write_text_atomic(folder.log_file, json.dumps({"type": "evaluation", **record}) + "\n")
    write_text_atomic(folder.path / "dev-metrics.json",
                      json.dumps(record["dev"], indent=2) + "\n")
    folder.predictions.mkdir(exist_ok=True)
    for name, (ids, values) in predictions.items():
        write_prediction_file(prediction_file(folder.predictions, tasks[name], "dev"),
                              tasks[name], ids, values)
    return folder
