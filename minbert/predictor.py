"""Using a trained model: predictions on new text, from one run or an ensemble of runs.

    import minbert
    model = minbert.load("runs/best-cpu")                # or a list of run folders
    model.predict("sst", ["a great film", "dull"])       # labels + class probabilities
    model.predict("quora", [("q1", "q2")]).probabilities[:, 1]   # P(duplicate)
    model.predict("sts", [("a man plays", "a man is playing")]).scores   # on 0-5

Each run keeps its own tokenizer and pair encoding (cross or bi); inputs are tokenised
once, batched by length and run in the precision rules of training (`auto`: bf16 where
the hardware computes it natively). An ensemble averages class probabilities (then takes
the most probable class) and regression scores, each task over the runs that have it
(so one multi-task model and single-task specialists can form one ensemble); runs that
share a task must declare it with the same labels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from minbert.data import EncodedTask, Examples, MinbertWarning
from minbert.devices import measured_shape, resolve_device, resolve_precision
from minbert.evaluation import outputs
from minbert.loading import LoadedRun, load_run
from minbert.runs import expand_seeds


class PredictError(ValueError):
    """Inputs or runs a prediction cannot use; the message says what and where."""


@dataclass
class Prediction:
    """One task's answers for its inputs, in input order (one input in, one row out)."""
    task: str
    values: np.ndarray                  # what a prediction file holds: a class or a score
    probabilities: np.ndarray | None    # (inputs, classes) for a task with classes
    class_names: list[str] | None = None  # the name of each class, for a task with classes

    @property
    def labels(self) -> np.ndarray | None:
        """The predicted class of each input (a task with classes), else None."""
        return self.values if self.probabilities is not None else None

    @property
    def label_names(self) -> list[str] | None:
        """The predicted class of each input by name ("positive", "duplicate"), else None."""
        if self.labels is None or not self.class_names:
            return None
        return [self.class_names[int(k)] for k in self.labels]

    @property
    def scores(self) -> np.ndarray | None:
        """The predicted score of each input (a task that predicts a score), else None."""
        return self.values if self.probabilities is None else None

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        first = Prediction(self.task, self.values[:5], None if self.probabilities is None
                           else self.probabilities[:5], self.class_names)
        shown = (first.label_names or [int(v) for v in first.values]
                 if first.probabilities is not None else
                 [round(float(v), 4) for v in first.values])
        more = f", ... ({len(self)} in all)" if len(self) > 5 else ""
        kind = "labels" if self.probabilities is not None else "scores"
        return f"Prediction({self.task!r}, {kind}={shown}{more})"


class Predictor:
    """One run, or an ensemble of runs. Members may hold different tasks (a multi-task
    model beside single-task specialists): each task is predicted by the members that
    have it, and members that share a task must declare it alike."""

    def __init__(self, runs: list[LoadedRun], device: str | None = None,
                 precision: str | None = None):
        if not runs:
            raise PredictError("no run to predict with")
        first = runs[0]
        self.members: dict[str, list[LoadedRun]] = {}  # task: the runs that predict it
        for run in runs:
            for name, task in run.tasks.items():
                owners = self.members.setdefault(name, [])
                if owners and task.output_spec() != owners[0].tasks[name].output_spec():
                    raise PredictError(
                        f"task {name}: {run.folder.path} declares it as "
                        f"{task.output_spec()}, {owners[0].folder.path} as "
                        f"{owners[0].tasks[name].output_spec()} (kind, columns, outputs, "
                        "labels, range)")
                owners.append(run)
        self.runs = runs
        # every member's tasks, in the order the members name them
        self.tasks = {name: owners[0].tasks[name] for name, owners in self.members.items()}
        self.device = resolve_device(device or first.config.train.device,
                                     "device" if device else "train.device")
        encoder = getattr(first.model, "encoder", None)  # None: an ONNX graph (fp32)
        self.autocast, self.precision = resolve_precision(
            precision or first.config.train.precision, self.device, encoder,
            measured_shape(first.config.data.eval_batch_size, first.config.model.max_length),
            training=False)
        for run in runs:
            run.model.to(self.device).eval()

    def check_inputs(self, task: str, inputs) -> list[list[str]]:
        """The inputs as text columns; errors name the task or the (1-based) input. One
        input (a sentence, a pair as a tuple, a dict row) counts as a list of one."""
        if task not in self.tasks:
            raise PredictError(f"no task {task!r} in this run; it has "
                               f"{', '.join(self.tasks)}")
        spec = self.tasks[task]
        width = len(spec.text_columns)
        if _one_input(inputs, width):
            inputs = [inputs]
        elif isinstance(inputs, (bytes, bytearray)) or not isinstance(inputs, Iterable):
            raise PredictError(f"task {task}: give a sentence, a pair or a list of them, got "
                               f"{type(inputs).__name__}")
        columns = [[] for _ in range(width)]
        for number, item in enumerate(inputs, start=1):
            for column, text in zip(columns, _texts(item, spec, number)):
                column.append(text)
        if not columns[0]:
            raise PredictError(f"no inputs for task {task}")
        return columns

    def predict(self, task: str, inputs, batch_size: int = 64,
                progress: bool = False) -> Prediction:
        """`task`'s prediction for `inputs`: a sentence (or, for a pair task, a pair as a
        tuple, or a dict with the task's text columns or `text`/`text_pair`), or a list of
        them. Classes come with their probabilities and names; scores on the task's range.
        An ensemble averages its members' probabilities (or scores)."""
        columns = self.check_inputs(task, inputs)
        spec = self.tasks[task]
        examples = Examples([str(i) for i in range(len(columns[0]))], columns)
        results = []
        for run in self.members[task]:
            data = EncodedTask(task, examples, run.tokenizer, run.model.encodings[task])
            if data.truncated:
                warnings.warn(f"{data.truncated} of {len(examples)} inputs are longer than "
                              f"{run.tokenizer.max_length} tokens and were truncated",
                              MinbertWarning, stacklevel=2)
            results.append(outputs(run.model, spec, data, batch_size, self.device,
                                   self.autocast, progress).float())
        # the members' mean prediction (class probabilities, or scores) as the task says
        mean = results[0] if len(results) == 1 else spec.mean_logits(results)
        probabilities = spec.probabilities(mean)
        values = spec.predict(mean)  # classes as integers, scores as floats
        values = values.double() if values.is_floating_point() else values.long()
        return Prediction(task, values.numpy(),
                          None if probabilities is None else probabilities.double().numpy(),
                          spec.class_names)


def _one_input(inputs, width: int) -> bool:
    """Whether `inputs` is a single input rather than a list of them."""
    if isinstance(inputs, (str, dict)):
        return True
    return (width == 2 and isinstance(inputs, tuple) and len(inputs) == 2
            and all(isinstance(x, str) for x in inputs))


def _texts(item, task, number: int) -> list[str]:
    """One input's texts, in the task's column order; errors name the input."""
    width = len(task.text_columns)
    takes = "a sentence" if width == 1 else "a pair of sentences"
    if isinstance(item, dict):
        aliases = [list(task.text_columns), ["text", "text_pair"][:width]]
        keys = next((k for k in aliases if all(c in item for c in k)), None)
        if keys is None:
            raise PredictError(f"input {number}: task {task.name} takes {takes}; a dict needs "
                               f"the keys {' and '.join(aliases[0])} (or "
                               f"{' and '.join(aliases[1])}), got {sorted(map(str, item))}")
        parts = [item[k] for k in keys]
    elif isinstance(item, str):
        parts = [item]
    elif isinstance(item, (tuple, list)):
        parts = list(item)
    else:
        raise PredictError(f"input {number}: task {task.name} takes {takes}, got "
                           f"{type(item).__name__}")
    if len(parts) != width:
        raise PredictError(f"input {number}: task {task.name} takes {takes}, got {item!r}")
    for text in parts:
        if not isinstance(text, str):
            raise PredictError(f"input {number}: a text must be a str, got "
                               f"{type(text).__name__}")
        if not text.strip():
            raise PredictError(f"input {number}: an empty text; every input needs words")
    return parts


def load(runs: str | Path | Sequence[str | Path], device: str | None = None,
         precision: str | None = None, backend: str = "torch") -> Predictor:
    """A predictor from one run folder or export, or a list of them (an ensemble; a
    `--seeds` folder is the ensemble of its seeds); `backend="onnx"` runs the graphs
    `minbert export RUN OUT --onnx` wrote (CPU, fp32)."""
    folders = expand_seeds([runs] if isinstance(runs, (str, Path)) else list(runs))
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
OUTPUT_FORMATS = (".csv", ".tsv", ".jsonl")


def read_inputs(source: str, columns: Sequence[str], table: bool | None = None
                ) -> tuple[list, list[str] | None]:
    """Inputs from a file, or stdin for '-', and their ids (an `id` column's values, else
    None). A table (a .csv/.tsv file, or whenever `table` is true) has a header naming
    `columns` (tab-separated for .tsv or a header with a tab, else comma-separated); any
    other file of a one-column task holds one sentence a line. Errors name the line."""
    import sys
    from minbert.data import read_lines
    name = "<stdin>" if source == "-" else source
    lines = list(sys.stdin) if source == "-" else list(read_lines(Path(source)))
    if table is None:
        table = len(columns) > 1 or Path(name).suffix.lower() in (".csv", ".tsv")
    if not table:
        inputs = []
        for number, line in enumerate(lines, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                raise PredictError(f"{name}, line {number}: an empty line; give one sentence "
                                   "a line")
            inputs.append(text)
        return inputs, None
    return _read_table(name, lines, columns)


def _read_table(name: str, lines: list[str], columns: Sequence[str]):
    import csv
    import io
    if not lines:
        raise PredictError(f"{name}: empty; a table needs a header line naming "
                           f"{', '.join(columns)}")
    delimiter = "\t" if name.endswith(".tsv") or "\t" in lines[0] else ","
    reader = csv.reader(io.StringIO("".join(lines)), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in columns if c not in header]
        if missing:
            raise PredictError(f"{name}: no column(s) {missing}; the header has {header} "
                               "(name them with --columns)")
        repeated = sorted({c for c in header if c and header.count(c) > 1})
        if repeated:
            raise PredictError(f"{name}: the header names {repeated} more than once")
        at = [header.index(c) for c in columns]
        id_at = header.index("id") if "id" in header else None
        inputs, ids = [], []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise PredictError(f"{name}, line {reader.line_num}: {len(row)} fields where "
                                   f"the header has {len(header)}")
            texts = tuple(row[i] for i in at)
            if not all(text.strip() for text in texts):
                raise PredictError(f"{name}, line {reader.line_num}: an empty sentence")
            inputs.append(texts[0] if len(texts) == 1 else texts)
            if id_at is not None:
                ids.append(row[id_at].strip())
    except csv.Error as e:
        raise PredictError(f"{name}, line {reader.line_num}: malformed quoting ({e})") from None
    return inputs, (ids if id_at is not None else None)


def write_outputs(path: str | None, inputs: list, prediction: Prediction, stream=None,
                  ids: list[str] | None = None) -> None:
    """CSV (TSV for .tsv, JSON lines for .jsonl) of ids, inputs and predictions; CSV on
    stdout without a path. Classes come with their name and probabilities (p_0, p_1, ...)."""
    import csv
    import json
    import sys
    if path and Path(path).suffix.lower() not in OUTPUT_FORMATS:
        raise PredictError(f"--out {path}: write a {', '.join(OUTPUT_FORMATS)} file")
    rows = []
    names = prediction.label_names
    for i, item in enumerate(inputs):
        texts = [item] if isinstance(item, str) else list(item)
        row = {"id": ids[i]} if ids is not None else {}
        row.update({f"text{j + 1}" if len(texts) > 1 else "text": t
                    for j, t in enumerate(texts)})
        if prediction.labels is not None:
            row["label"] = int(prediction.labels[i])
            if names is not None:
                row["label_name"] = names[i]
            row.update({f"p_{c}": round(float(p), 6)
                        for c, p in enumerate(prediction.probabilities[i])})
        else:
            row["score"] = round(float(prediction.scores[i]), 6)
        rows.append(row)
    suffix = Path(path).suffix.lower() if path else ".csv"
    out = open(path, "w", encoding="utf-8", newline="") if path else (stream or sys.stdout)
    try:
        if suffix == ".jsonl":
            out.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n",
                                    delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if path:
            out.close()
