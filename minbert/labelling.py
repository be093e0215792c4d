"""Teacher-labelled training data: one task's texts, labelled by trained runs for another.

    minbert data label runs/ld/specialist-sts --task sts --texts-of quora --out silver.csv

writes a task file for `sts` (id, sentence1, sentence2, similarity) from the Quora
training pairs, each labelled with the mean prediction of the given runs (a `--seeds` or
specialists folder stands for its seeds' ensemble): the teachers' knowledge on texts the
task's own file does not hold. A distillation transfer set, as Augmented SBERT (Thakur et
al. 2021) labels new pairs for a bi-encoder. A regression task gets the mean score, a
classification task the ensemble's class.

Texts of your own, unlabelled, label the same way: `--texts FILE` (one sentence a line
for a one-text task such as sst; a .csv/.tsv table with the task's text columns, and an
`id` column if you like, as `minbert predict` reads; `--columns` names other columns) in
place of `--texts-of TASK`.

Only the training share of the source task's files is labelled: with `--validation F`
(as `data.validation` of the runs that will train on the file, 0.1 in the recipes) the
examples a run holds out of the source task are left out, so no text of a validation
split enters training under another task's name. Add the file to the task with
`hold_out = false`, so that it does not join the task's own validation split either:

    [tasks.sts]
    train_files = ["sts-train.csv", {path = "/abs/silver.csv", subsample = 6040, hold_out = false}]
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from minbert.convert import write_task_file
from minbert.data import DataError
from minbert.tasks import Task, build_task


def label(runs: Sequence[str | Path], task: str, texts_of: str | Task,
          data_dir: str | Path, out: str | Path, validation: float = 0.1,
          validation_seed: int = 0, batch_size: int = 64, progress: bool = False
          ) -> tuple[int, int]:
    """Writes `out`: the training texts of `texts_of` (a built-in task's name, or a task)
    with `task`'s label from the runs' mean prediction; returns the number of rows and of
    teacher runs."""
    if not 0 <= validation < 1:
        raise ValueError(f"--validation {validation}: a share of the data, 0 ≤ F < 1")
    source = build_task(texts_of, {}) if isinstance(texts_of, str) else texts_of
    predictor, spec = _teachers(runs, task, out)
    if len(spec.text_columns) != len(source.text_columns):
        raise ValueError(f"--texts-of {source.name}: its examples have "
                         f"{len(source.text_columns)} text(s), task {task} reads "
                         f"{len(spec.text_columns)}")
    examples, _, _ = source.read_train_and_validation(data_dir, 0, validation,
                                                      validation_seed)
    return _write(predictor, spec, examples.ids, list(zip(*examples.texts)), out, batch_size,
                  progress)


def label_file(runs: Sequence[str | Path], task: str, texts: str | Path, out: str | Path,
               batch_size: int = 64, progress: bool = False,
               columns: Sequence[str] | None = None) -> tuple[int, int]:
    """Writes `out`: the examples of the file `texts` (one sentence a line for a one-text
    task, else a table naming the task's text columns, or `columns`) with `task`'s label
    from the runs' mean prediction, ids from its `id` column or `NAME-N` (the N-th text);
    returns the number of rows and of teacher runs."""
    from minbert.predictor import read_inputs
    predictor, spec = _teachers(runs, task, out)
    if columns and len(columns) != len(spec.text_columns):
        raise ValueError(f"--columns {','.join(columns)}: task {task} reads "
                         f"{len(spec.text_columns)} text column(s)")
    inputs, ids = read_inputs(str(texts), columns or spec.text_columns,
                              table=True if columns else None)
    if not inputs:
        raise DataError(f"{texts}: no texts to label")
    if ids is None:  # the file's name and the example's number
        ids = [f"{Path(texts).stem}-{number}" for number in range(1, len(inputs) + 1)]
    inputs = [item if isinstance(item, tuple) else (item,) for item in inputs]
    return _write(predictor, spec, ids, inputs, out, batch_size, progress)


def _teachers(runs, task: str, out):
    from minbert.predictor import load
    if Path(out).is_dir():
        raise DataError(f"{out}: is a folder; give the path of the file to write")
    predictor = load(list(runs))
    if task not in predictor.tasks:
        raise ValueError(f"--task {task}: the runs have no such task (they have "
                         f"{', '.join(predictor.tasks)})")
    return predictor, predictor.tasks[task]


def _write(predictor, spec, ids, inputs: list[tuple], out, batch_size: int, progress: bool
           ) -> tuple[int, int]:
    prediction = predictor.predict(spec.name, inputs, batch_size, progress=progress)
    if prediction.scores is not None:
        labels = [f"{value:.4f}" for value in prediction.scores]
    else:
        labels = [str(int(value)) for value in prediction.labels]
    rows = ((example_id, *texts, value) for example_id, texts, value in zip(ids, inputs, labels))
    return (write_task_file(out, (*spec.text_columns, spec.label_column), rows),
            len(predictor.members[spec.name]))
