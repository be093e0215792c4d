"""Using a trained model: predictions on new text, from one run or an ensemble of runs.

    import minbert
    model = minbert.load("runs/best-cpu")                # or a list of run folders
    model.predict("sst", ["a great film", "dull"])       # labels + class probabilities
    model.predict("quora", [("q1", "q2")]).probabilities[:, 1]   # P(duplicate)
    model.predict("sts", [("a man plays", "a man is playing")]).scores   # on 0-5

Each run keeps its own tokenizer and pair encoding (cross or bi); inputs are tokenised
once, batched by length and run in the precision rules of training (`auto`: bf16 where
the hardware computes it natively). An ensemble averages class probabilities (then takes
the most probable class) and regression scores; its runs must declare the same tasks
with the same labels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from minbert.data import EncodedTask, Examples
from minbert.evaluation import outputs
from minbert.devices import resolve_device, resolve_precision
from minbert.loading import LoadedRun, load_run


class PredictError(ValueError):
    """Inputs or runs a prediction cannot use; the message says what and where."""


@dataclass
class Prediction:
    """One task's answers for a list of inputs, in input order."""
    task: str
    values: np.ndarray                  # what a prediction file holds: a class or a score
    probabilities: np.ndarray | None    # (inputs, classes) for a task with classes

    @property
    def labels(self) -> np.ndarray | None:
        """The predicted class of each input (a task with classes), else None."""
        return self.values if self.probabilities is not None else None

    @property
    def scores(self) -> np.ndarray | None:
        """The predicted score of each input (a task that predicts a score), else None."""
        return self.values if self.probabilities is None else None


class Predictor:
    def __init__(self, runs: list[LoadedRun], device: str | None = None,
                 precision: str | None = None):
        if not runs:
            raise PredictError("no run to predict with")
        first = runs[0]
        for run in runs[1:]:
            if list(run.tasks) != list(first.tasks):
                raise PredictError(f"{run.folder.path} has tasks {list(run.tasks)}, "
                                   f"{first.folder.path} has {list(first.tasks)}: an ensemble "
                                   "needs the same tasks")
            for name, task in run.tasks.items():
                if task.output_spec() != first.tasks[name].output_spec():
                    raise PredictError(
                        f"task {name}: {run.folder.path} declares it as "
                        f"{task.output_spec()}, {first.folder.path} as "
                        f"{first.tasks[name].output_spec()} (kind, columns, outputs, labels, "
                        "range)")
        self.runs = runs
        self.device = resolve_device(device or first.config.train.device,
                                     "device" if device else "train.device")
        encoder = getattr(first.model, "encoder", None)  # None: an ONNX graph (fp32)
        self.autocast, self.precision = resolve_precision(
            precision or first.config.train.precision, self.device, encoder,
            (first.config.data.eval_batch_size, min(64, first.config.model.max_length)),
            training=False)
        for run in runs:
            run.model.to(self.device).eval()

    @property
    def tasks(self) -> dict:
        return self.runs[0].tasks

    def check_inputs(self, task: str, inputs: Sequence) -> list[list[str]]:
        """The inputs as text columns; errors name the task or the (1-based) input."""
        if task not in self.tasks:
            raise PredictError(f"no task {task!r} in this run; it has "
                               f"{', '.join(self.tasks)}")
        width = len(self.tasks[task].text_columns)
        columns = [[] for _ in range(width)]
        for number, item in enumerate(inputs, start=1):
            parts = [item] if isinstance(item, str) else list(item)
            if len(parts) != width:
                raise PredictError(f"input {number}: task {task} takes "
                                   f"{'a sentence' if width == 1 else 'a pair of sentences'}, "
                                   f"got {item!r}")
            for column, text in zip(columns, parts):
                if not isinstance(text, str) or not text.strip():
                    raise PredictError(f"input {number}: an empty text; every input needs "
                                       "words")
                column.append(text)
        if not columns[0]:
            raise PredictError(f"no inputs for task {task}")
        return columns

    def predict(self, task: str, inputs: Sequence, batch_size: int = 64,
                progress: bool = False) -> Prediction:
        columns = self.check_inputs(task, inputs)
        spec = self.tasks[task]
        examples = Examples([str(i) for i in range(len(columns[0]))], columns)
        results = []
        for run in self.runs:
            data = EncodedTask(task, examples, run.tokenizer, run.model.encodings[task])
            if data.truncated:
                warnings.warn(f"{data.truncated} of {len(examples)} inputs are longer than "
                              f"{run.tokenizer.max_length} tokens and were truncated",
                              stacklevel=2)
            results.append(outputs(run.model, spec, data, batch_size, self.device,
                                   self.autocast, progress).float())
        # the members' mean prediction (class probabilities, or scores) as the task says
        mean = results[0] if len(results) == 1 else spec.mean_logits(results)
        probabilities = spec.probabilities(mean)
        return Prediction(task, spec.predict(mean).double().numpy(),
                          None if probabilities is None else probabilities.double().numpy())


def load(runs: str | Path | Sequence[str | Path], device: str | None = None,
         precision: str | None = None, backend: str = "torch") -> Predictor:
    """A predictor from one run folder or export, or a list of them (an ensemble);
    `backend="onnx"` runs the graphs `minbert export RUN OUT --onnx` wrote (CPU, fp32)."""
    folders = [runs] if isinstance(runs, (str, Path)) else list(runs)
    loaded = [load_run(folder) for folder in folders]
    if backend == "onnx":
        from minbert.onnx_backend import OnnxModel
        for run in loaded:
            run.model = OnnxModel(run.folder.path / "onnx", run.tasks, run.model.encodings)
        device, precision = "cpu", "fp32"
    elif backend != "torch":
        raise PredictError(f"backend {backend!r}: use torch or onnx")
    return Predictor(loaded, device, precision)


# ---------------------------------------------------------------------- files of new text
def read_inputs(source: str, width: int, columns: Sequence[str]) -> list:
    """Inputs from a file, or stdin for '-': one sentence a line (width 1), or a table of
    pairs with a header naming `columns` (tab-separated for .tsv or a header with a tab,
    else comma-separated). Errors name the line."""
    import csv
    import io
    import sys
    from minbert.data import read_lines
    name = "<stdin>" if source == "-" else source
    if source == "-":
        lines = list(sys.stdin)
    else:
        lines = list(read_lines(Path(source)))
    if width == 1:
        inputs = []
        for number, line in enumerate(lines, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                raise PredictError(f"{name}, line {number}: an empty line; give one sentence "
                                   "a line")
            inputs.append(text)
        return inputs
    if not lines:
        raise PredictError(f"{name}: empty; a pair task needs a header line naming "
                           f"{', '.join(columns)}")
    delimiter = "\t" if name.endswith(".tsv") or "\t" in lines[0] else ","
    reader = csv.reader(io.StringIO("".join(lines)), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        missing = [c for c in columns if c not in header]
        if missing:
            raise PredictError(f"{name}: no column(s) {missing}; the header has {header} "
                               "(name them with --columns a,b)")
        at = [header.index(c) for c in columns]
        inputs = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise PredictError(f"{name}, line {reader.line_num}: {len(row)} fields where "
                                   f"the header has {len(header)}")
            pair = tuple(row[i] for i in at)
            if not all(text.strip() for text in pair):
                raise PredictError(f"{name}, line {reader.line_num}: an empty sentence")
            inputs.append(pair)
    except csv.Error as e:
        raise PredictError(f"{name}, line {reader.line_num}: malformed quoting ({e})") from None
    return inputs


def write_outputs(path: str | None, inputs: list, prediction: Prediction, stream=None) -> None:
    """CSV (or JSON lines for a .jsonl path) of inputs and predictions; stdout without a
    path. Classes come with their probabilities (p_0, p_1, ...)."""
    import csv
    import json
    import sys
    rows = []
    for i, item in enumerate(inputs):
        texts = [item] if isinstance(item, str) else list(item)
        row = {f"text{j + 1}" if len(texts) > 1 else "text": t for j, t in enumerate(texts)}
        if prediction.labels is not None:
            row["label"] = int(prediction.labels[i])
            row.update({f"p_{c}": round(float(p), 6)
                        for c, p in enumerate(prediction.probabilities[i])})
        else:
            row["score"] = round(float(prediction.scores[i]), 6)
        rows.append(row)
    out = open(path, "w", encoding="utf-8", newline="") if path else (stream or sys.stdout)
    try:
        if path and str(path).endswith(".jsonl"):
            out.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if path:
            out.close()
