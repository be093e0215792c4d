"""What every task declares: its inputs, files, outputs, loss, metric and SMART divergence,
and how the rest of the toolkit should treat it (its metric on bootstrap resamples for
`compare`, an ensemble's prediction for the predictor, its report analyses and the range
of its values for figures), so that a new task kind is one module."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minbert.config import PAIR_ENCODINGS, POOLINGS
from minbert.data import Examples, held_out_mask, read_examples, subsample_indices
from minbert.registry import Registry

# task kinds by their `kind`; a kind's options are its dataclass fields
KINDS = Registry("task kind", "tasks.NAME.kind", attribute="kind")


@dataclass
class Task:
    """A sentence-level task. Subclasses (one per output kind) fill in the maths."""
    name: str
    text_columns: tuple[str, ...]  # ("sentence",) or ("sentence1", "sentence2")
    label_column: str
    train_files: list[str] = field(default_factory=list)
    dev_file: str | None = None
    test_file: str | None = None
    output_prefix: str = ""        # leaderboard file name: {prefix}-dev-output.csv
    prediction_header: str = "Predicted"
    subsample: float | None = None  # keep a fraction (< 1) or a count (≥ 1) of training data
    pair_encoding: str | None = None  # "cross" | "bi" | "both" for this pair task; None: model.pair_encoding
    pooling: str | None = None     # "mean" | "cls" | "pooler" for this task; None: model.pooling
    pool_layers: int = 1           # the pooled outputs of the top N layers, concatenated
    loss_weight: float = 1.0       # this task's loss (and its regularisers' terms) scaled
    epochs: float | None = None    # train on this task for the run's first N epochs (a
                                   # fraction: that share of the last one); None: all of them
    lr_scale: float = 1.0          # the learning rate of updates drawn from this task, scaled
    own_layers: int = 0            # the top N encoder layers as this task's own copy
                                   # (from the same pretrained weights); the layers below
                                   # stay shared
    projection: bool = False       # a pair scored by cosine: a learned linear map (the
                                   # identity at first) on each sentence vector before it

    kind = ""                    # the name a config gives: kind = "classification"
    metric_name = "metric"
    metric_abbreviation = ""     # its column in ablation tables: sst_acc, sts_corr
    smart_divergence = "sym-kl"  # SMART's divergence when a run leaves it on "auto"
    cosine_pair_head = False     # may a bi-encoded pair be scored by cosine similarity?

    @property
    def classes(self) -> list[int] | None:
        """The label values of a classification task; None for scores."""
        return None

    @property
    def analyses(self) -> tuple[str, ...]:
        """The report's analyses of this task's dev predictions (names registered in
        minbert/analyses.py)."""
        return ()

    @property
    def class_names(self) -> list[str] | None:
        """The name of each class ("negative", "duplicate"), for outputs; None for scores."""
        return None

    @property
    def value_range(self) -> tuple[float, float] | None:
        """The range of a predicted score, for figures' axes; None for classes."""
        return None

    @property
    def output_description(self) -> str:
        """How the head's logits become the prediction, in words (model cards, heads.json)."""
        return "the task kind's predict() of the logits"

    def output_spec(self) -> tuple:
        """What models that predict this task together (an ensemble) must agree on."""
        return (self.kind, len(self.text_columns), self.num_outputs, tuple(self.classes or ()),
                self.value_range)

    def check(self) -> None:
        """Raises ValueError naming the key when a declared value cannot work."""
        where = f"tasks.{self.name}"
        columns = self.text_columns
        if (not isinstance(columns, (list, tuple)) or len(columns) not in (1, 2)
                or not all(isinstance(c, str) and c for c in columns)):
            raise ValueError(f"{where}.text_columns: one column name (a sentence) or two (a "
                             f"pair), got {columns!r}")
        for key in ("label_column", "prediction_header"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"{where}.{key}: a non-empty string, got "
                                 f"{getattr(self, key)!r}")
        for key in ("dev_file", "test_file"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"{where}.{key}: a file name, got {getattr(self, key)!r}")
        if not isinstance(self.train_files, list):
            raise ValueError(f"{where}.train_files: a list of file names, got "
                             f"{self.train_files!r}")
        for entry in self.train_files:
            entry = {"path": entry} if isinstance(entry, str) else entry
            if (not isinstance(entry, dict) or not isinstance(entry.get("path"), str)
                    or set(entry) - {"path", "subsample", "hold_out"}):
                raise ValueError(f"{where}.train_files: each entry is a file name or "
                                 f"{{path = \"...\", subsample = N, hold_out = false}}, got "
                                 f"{entry!r}")
            _check_subsample(f"{where}.train_files {entry['path']!r}", entry.get("subsample"))
            if not isinstance(entry.get("hold_out", True), bool):
                raise ValueError(f"{where}.train_files {entry['path']!r}: hold_out is true or "
                                 f"false, got {entry['hold_out']!r}")
        _check_subsample(f"{where}.subsample", self.subsample)
        if not isinstance(self.output_prefix, str) or not _PLAIN_NAME.fullmatch(
                self.output_prefix):
            raise ValueError(f"{where}.output_prefix: {self.output_prefix!r} is not a plain "
                             "file name (letters, digits, '.', '_', '-'; no folders)")
        if self.pooling not in (None, *POOLINGS):
            raise ValueError(f"{where}.pooling: {self.pooling!r} is not one of {POOLINGS}")
        if isinstance(self.pool_layers, bool) or not isinstance(self.pool_layers, int) \
                or self.pool_layers < 1:
            raise ValueError(f"{where}.pool_layers: a whole number ≥ 1, got "
                             f"{self.pool_layers!r}")
        if self.pooling == "pooler" and self.pool_layers != 1:
            raise ValueError(f"{where}.pool_layers: the pooler reads the last layer only; "
                             "use pooling = \"mean\" or \"cls\" to concatenate layers")
        if isinstance(self.own_layers, bool) or not isinstance(self.own_layers, int) \
                or self.own_layers < 0:
            raise ValueError(f"{where}.own_layers: a whole number ≥ 0, got "
                             f"{self.own_layers!r}")
        if not isinstance(self.projection, bool):
            raise ValueError(f"{where}.projection: true or false, got {self.projection!r}")
        weight = self.loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}.loss_weight: a number ≥ 0, got {weight!r}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(
                self.epochs, (int, float)) or not math.isfinite(self.epochs) or self.epochs <= 0):
            raise ValueError(f"{where}.epochs: a number of epochs > 0 (at most train.epochs), "
                             f"got {self.epochs!r}")
        scale = self.lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"{where}.lr_scale: a number > 0, got {scale!r}")
        if self.pair_encoding not in (None, *PAIR_ENCODINGS):
            raise ValueError(f"{where}.pair_encoding: {self.pair_encoding!r} is not one of "
                             f"{PAIR_ENCODINGS}")

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_outputs(self) -> int:
        raise NotImplementedError

    def epoch_share(self, epoch: int) -> float:
        """The share of this task's training batches in the run's epoch `epoch` (from 0):
        1 within its `epochs`, the fraction in the last, 0 after."""
        if self.epochs is None:
            return 1.0
        return min(1.0, max(0.0, self.epochs - epoch))

    def encoding(self, default_encoding: str) -> str:
        """How this task's examples become segments (data.ENCODINGS): "single" for one
        sentence; for a pair its own pair_encoding, else `default_encoding` (the run's)."""
        return (self.pair_encoding or default_encoding) if self.is_pair else "single"

    def parse_label(self, raw: str) -> float:
        raise NotImplementedError

    def read(self, path: str | Path, labelled: bool = True) -> Examples:
        return read_examples(path, self.text_columns, self.label_column if labelled else None,
                             self.parse_label)

    def read_train(self, data_dir: str | Path, seed: int) -> tuple[Examples, dict[str, int]]:
        """The training set and the count each file gave (see read_train_and_validation)."""
        examples, _, counts = self.read_train_and_validation(data_dir, seed)
        return examples, counts

    def read_train_and_validation(self, data_dir: str | Path, seed: int,
                                  validation: float = 0.0, validation_seed: int = 0
                                  ) -> tuple[Examples, Examples | None, dict[str, int]]:
        """The training set: every train file (a name, or {path, subsample, hold_out}),
        each subsampled on its own, then the whole subsampled; also the count each file
        gave.

        With `validation` > 0 that share of every file is held out first, before any
        subsampling, stratified by `strata` and chosen by a hash of (validation_seed, task,
        example id): the same examples on every run and machine, whatever the subsampling,
        order of rows or run seed. The held-out examples are returned as the second value.
        A file with `hold_out = false` gives none: pairs a teacher labelled, say, should not
        choose the epoch."""
        parts, held, counts = [], [], {}
        for number, entry in enumerate(self.train_files):
            entry = {"path": entry} if isinstance(entry, str) else dict(entry)
            path = Path(data_dir) / entry["path"]
            part = self.read(path)
            if validation and entry.get("hold_out", True):
                mask = held_out_mask(part.ids, self.strata(part.labels), validation,
                                     f"{validation_seed}:{self.name}")
                held.append(part.subset(np.flatnonzero(mask)))
                part = part.subset(np.flatnonzero(~mask))
            part = part.subset(_subsample(len(part), entry.get("subsample"),
                                          seed + 7919 * (number + 1),
                                          f"tasks.{self.name}.train_files {entry['path']!r}"))
            counts[str(path)] = len(part)
            parts.append(part)
        if not parts:
            raise ValueError(f"tasks.{self.name}.train_files is empty")
        examples = Examples.concatenate(parts)
        examples = examples.subset(_subsample(len(examples), self.subsample, seed,
                                              f"tasks.{self.name}.subsample"))
        return examples, Examples.concatenate(held) if held else None, counts

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """A stratum per example for the held-out split (classes, or bands of a score)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batch-mean training loss; logits (batch, num_outputs), labels (batch,)."""
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions in label units (class index or score)."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Class probabilities (batch, classes); None for a task that predicts a score."""
        return None

    def metric(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        raise NotImplementedError

    def resampled_metric(self, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The metric of each bootstrap resample: predictions and labels (resamples,
        examples) -> (resamples,). Kinds vectorise it; this default asks `metric` of each."""
        return np.array([self.metric(p, y) for p, y in zip(predictions, labels)])

    def divergence(self, logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
        """Batch-mean divergence ℓs between outputs, for SMART; `kind` is 'kl', 'sym-kl' or
        'squared'. `target` is the reference output (detached by the caller)."""
        raise NotImplementedError

    def mean_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Logits whose prediction is the mean of several models' predictions (what an
        ensemble says: distillation targets, the predictor's answer)."""
        raise NotImplementedError

    def overall_share(self, value: float) -> float:
        """This task's metric as it enters the overall score (a mean over tasks)."""
        return value

    def format_prediction(self, value) -> str:
        return str(value)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _subsample(size: int, amount, seed: int, where: str) -> np.ndarray:
    try:
        return subsample_indices(size, amount, seed)
    except ValueError as e:
        raise ValueError(f"{where}: {e}; keep a larger share") from None


def _check_subsample(where: str, amount) -> None:
    if amount is None:
        return
    if (isinstance(amount, bool) or not isinstance(amount, (int, float))
            or not math.isfinite(amount) or amount <= 0):
        raise ValueError(f"{where}: subsample is a fraction (< 1) or a count (≥ 1) of "
                         f"examples, got {amount!r}")
