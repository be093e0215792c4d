"""Tasks: the three built in (sst, quora, sts) and any a config declares without code.

A task kind is one module (classification.py, regression.py); a config picks the kind by
name and gives the columns and files:

    [tasks.cfimdb]
    kind = "classification"
    num_classes = 2
    text_columns = ["sentence"]
    label_column = "sentiment"
    train_files = ["ids-cfimdb-train.csv"]
    dev_file = "ids-cfimdb-dev.csv"
"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from minbert.data import Examples
from minbert.tasks.base import KINDS, Task
from minbert.tasks.classification import ClassificationTask
from minbert.tasks.regression import RegressionTask

TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

BUILTIN: dict[str, dict] = {
    "sst": dict(kind="classification", num_classes=5, ordinal=True,
                label_names=["very negative", "negative", "neutral", "positive",
                             "very positive"], text_columns=["sentence"],
                label_column="sentiment", train_files=["ids-sst-train.csv"],
                dev_file="ids-sst-dev.csv", test_file="ids-sst-test-student.csv",
                output_prefix="sst", prediction_header="Predicted_Sentiment"),
    "quora": dict(kind="classification", num_classes=2,
                  label_names=["not duplicate", "duplicate"],
                  text_columns=["sentence1", "sentence2"],
                  label_column="is_duplicate", train_files=["quora-train-subset.csv"],
                  dev_file="quora-dev.csv", test_file="quora-test-student.csv",
                  output_prefix="para", prediction_header="Predicted_Is_Paraphrase"),
    "sts": dict(kind="regression", low=0.0, high=5.0, text_columns=["sentence1", "sentence2"],
                label_column="similarity", train_files=["sts-train.csv"],
                dev_file="sts-dev.csv", test_file="sts-test-student.csv",
                output_prefix="sts", prediction_header="Predicted_Similiarity"),
}


def build_task(name: str, spec: dict) -> Task:
    """A task from its spec; `spec` overrides the built-in of the same name, if any.

    Errors name the task and the key, for config files."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ValueError(f"task name {name!r}: use letters, digits, '_' and '-', starting with "
                         "a letter (a task's name becomes file names and report headings)")
    builtin = dict(BUILTIN.get(name, {}))
    if "num_classes" in spec and "label_names" not in spec:  # other classes, other names
        builtin.pop("label_names", None)
    spec = {**builtin, **spec}
    kind = spec.pop("kind", None)
    if kind is None:
        raise ValueError(f"tasks.{name}: not a built-in task ({', '.join(BUILTIN)}), so it "
                         f"needs kind, text_columns, label_column and its files")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"tasks.{name}.kind = {kind!r}; use one of "
                         f"{', '.join(KINDS.names())}")
    cls = KINDS.get(kind)
    known = {f.name for f in fields(cls)} - {"name"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"tasks.{name}: unknown key(s) {unknown}; a {kind} task takes "
                         f"{sorted(known)}")
    for required in ("text_columns", "label_column"):
        if required not in spec:
            raise ValueError(f"tasks.{name}.{required} is required")
    spec.setdefault("output_prefix", name)
    task = cls(name=name, **spec)
    task.check()
    task.text_columns = tuple(task.text_columns)
    return task


def build_tasks(config) -> dict[str, Task]:
    """A run config's tasks, in data.tasks order, each from its [tasks.NAME] table."""
    return {name: build_task(name, dict(config.tasks.get(name, {})))
            for name in config.data.tasks}


def read_split(config, task: Task, split: str, labelled: bool = True) -> Examples | None:
    """One split ('dev' or 'test') of a task as Examples (dev cut to data.dev_limit), or
    None when the task has no such file."""
    file = task.dev_file if split == "dev" else task.test_file
    if not file:
        return None
    examples = task.read(Path(config.data.dir) / file, labelled=labelled)
    if split == "dev" and config.data.dev_limit:
        examples = examples.subset(range(min(len(examples), config.data.dev_limit)))
    return examples


__all__ = ["BUILTIN", "KINDS", "ClassificationTask", "RegressionTask", "Task", "build_task",
           "build_tasks", "read_split"]
