"""Reading the task files, subsampling, and length-bucketed batches with dynamic padding.

The files are the CS224N ones (see ../shared/data/SOURCES.md): tab-separated, a header,
an unnamed index column, read by column name. Test files have no label column.
"""
from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from minbert.config import ENCODINGS
from minbert.tokenizer import pad_batch

csv.field_size_limit(10_000_000)


class DataError(ValueError):
    """A data file that cannot be used; the message names the file (and line)."""


class MinbertWarning(UserWarning):
    """Something the user should know that does not stop the work (rows skipped, inputs
    truncated); the CLI prints it as one line, `minbert: warning: ...`."""


@dataclass
class Examples:
    """One split of one task, column-wise: ids, one or two text columns, labels (or None)."""
    ids: list[str]
    texts: list[list[str]]  # one list per text column: [sentences] or [firsts, seconds]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> "Examples":
        indices = list(indices)
        return Examples(
            ids=[self.ids[i] for i in indices],
            texts=[[column[i] for i in indices] for column in self.texts],
            labels=None if self.labels is None else self.labels[indices])

    @staticmethod
    def concatenate(parts: Sequence["Examples"]) -> "Examples":
        labels = [p.labels for p in parts]
        return Examples(
            ids=[i for p in parts for i in p.ids],
            texts=[[t for p in parts for t in p.texts[c]] for c in range(len(parts[0].texts))],
            labels=None if any(x is None for x in labels) else np.concatenate(labels))


def read_lines(path: Path):
    """The file's lines, decoded one at a time (UTF-8 never puts a newline byte inside a
    character), so an undecodable byte is named by its line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as fp:
        for number, raw in enumerate(fp, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {number}: not UTF-8 text (byte "
                                f"0x{raw[e.start]:02x} at column {e.start + 1}); save the file "
                                "as UTF-8") from None


def read_rows(path: str | Path, delimiter: str = "\t"):
    """(line number, fields) of each record of a delimited file, read strictly.

    Fields may be quoted as CSV does (the CS224N files are written by pandas: a field
    that holds a quote is wrapped in quotes, inner quotes doubled). Every record must be
    one line: a quote left open would otherwise swallow the rows after it, so it is an
    error naming the line where it opened, as is malformed quoting."""
    reader = csv.reader(read_lines(Path(path)), delimiter=delimiter, strict=True)
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            what = ("a quote opened on this line is never closed" if "end of data" in str(e)
                    else f"malformed quoting ({e})")
            raise DataError(f"{path}, line {line + 1}: {what}; a field that starts with a "
                            "quote must end with one on the same line, inner quotes doubled"
                            ) from None
        if reader.line_num - line > 1:
            raise DataError(f"{path}, line {line + 1}: a quote opened on this line is closed "
                            f"only on line {reader.line_num}, which would merge "
                            f"{reader.line_num - line} rows into one; a field that starts "
                            "with a quote must end with one on the same line")
        line = reader.line_num
        if row:
            yield line, row


def read_examples(path: str | Path, text_columns: Sequence[str], label_column: str | None,
                  parse_label: Callable[[str], float] | None = None) -> Examples:
    """Reads a task file. With `label_column`, every row needs a label that parses.

    Rows with an empty label (quora-dev.csv has two) are skipped with one warning that
    names their lines; a row with more or fewer fields than the header, or a label that
    does not parse, is an error naming the file and line.
    """
    path = Path(path)
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: the file is empty (no header line)")
    header = first[1]
    needed = ["id", *text_columns] + ([label_column] if label_column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has "
                        f"{[c for c in header if c]}")
    repeated = sorted({c for c in needed if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: the header names {repeated} more than once; which one is "
                        "meant is not clear")
    at = {name: header.index(name) for name in needed}
    ids, texts, labels, skipped = [], [[] for _ in text_columns], [], []
    first_line: dict[str, int] = {}  # id -> the line it was first seen on
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields where the header has "
                            f"{len(header)} (a stray tab or a missing field)")
        if label_column:
            raw = row[at[label_column]].strip()
            if raw == "":
                skipped.append(f"line {line} (id {row[at['id']]})")
                continue
            try:
                label = parse_label(raw) if parse_label else float(raw)
            except ValueError as e:
                raise DataError(f"{path}, line {line}, column {label_column!r}: {e}") from None
            labels.append(label)
        example_id = row[at["id"]]
        if example_id in first_line:
            raise DataError(f"{path}, line {line}: id {example_id!r} is already on line "
                            f"{first_line[example_id]}; every example needs its own id")
        first_line[example_id] = line
        ids.append(example_id)
        for column, name in zip(texts, text_columns):
            column.append(row[at[name]])
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} row(s) with an empty label: "
                      f"{', '.join(skipped[:20])}", MinbertWarning, stacklevel=2)
    if not ids:
        raise DataError(f"{path}: no usable rows")
    return Examples(ids, texts, np.asarray(labels, dtype=np.float64) if label_column else None)


def held_out_mask(ids: Sequence[str], strata: np.ndarray, share: float, salt: str) -> np.ndarray:
    """True for the examples held out: in each stratum, the `share` of its examples whose
    hash of (salt, id) is smallest. It depends on the ids alone, not on their order."""
    keys = np.array([int.from_bytes(hashlib.sha1(f"{salt}:{i}".encode()).digest()[:8], "big")
                     for i in ids], dtype=np.uint64)
    mask = np.zeros(len(ids), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        chosen = members[np.argsort(keys[members], kind="stable")]
        mask[chosen[:int(round(share * len(members)))]] = True
    return mask


def subsample_indices(size: int, amount: float | int | None, seed: int) -> np.ndarray:
    """Seeded sample without replacement: `amount` < 1 is a fraction, ≥ 1 a count."""
    if amount is None:
        return np.arange(size)
    count = int(round(amount * size)) if amount < 1 else int(amount)
    if count <= 0:
        raise ValueError(f"subsample {amount} keeps no example of {size}")
    count = min(count, size)
    return np.sort(np.random.default_rng(seed).choice(size, size=count, replace=False))


@dataclass
class Batch:
    """A padded batch of one task: its segments as ENCODINGS lists them."""
    task: str
    segments: list[dict[str, torch.Tensor]]
    labels: torch.Tensor | None
    indices: np.ndarray  # positions in the task's example list

    @property
    def size(self) -> int:
        return len(self.indices)

    def to(self, device) -> "Batch":
        return Batch(self.task, [{k: v.to(device, non_blocking=True) for k, v in s.items()}
                                 for s in self.segments],
                     None if self.labels is None else self.labels.to(device), self.indices)

    def select(self, rows: torch.Tensor) -> "Batch":
        """The batch's examples at `rows` (positions in the batch), padding trimmed to them."""
        segments = []
        for segment in self.segments:
            length = int(segment["attention_mask"][rows].sum(1).max())
            segments.append({k: v[rows, :length] for k, v in segment.items()})
        return Batch(self.task, segments, None if self.labels is None else self.labels[rows],
                     np.asarray(self.indices)[rows.cpu().numpy()])

    def token_counts(self) -> tuple[int, int]:
        """(real tokens, padded slots) over all segments."""
        real = sum(int(s["attention_mask"].sum()) for s in self.segments)
        slots = sum(s["attention_mask"].numel() for s in self.segments)
        return real, slots


# How a task's examples become segments, the sequences the encoder reads:
#   single  one sentence                    [CLS] a [SEP]
#   cross   a pair as one sequence          [CLS] a [SEP] b [SEP]
#   bi      a pair, each sentence alone     [CLS] a [SEP], [CLS] b [SEP]
#   both    cross, then bi                  the three above


class EncodedTask:
    """A task split tokenised once: per example, one (ids, type_ids) per segment."""

    def __init__(self, name: str, examples: Examples, tokenizer, encoding: str):
        self.name = name
        self.examples = examples
        self.pad_id = tokenizer.pad_id
        pair = len(examples.texts) == 2
        if encoding not in ENCODINGS or pair == (encoding == "single"):
            raise ValueError(f"{name}: encoding {encoding!r} does not fit "
                             f"{'a pair' if pair else 'one sentence'} (one of "
                             f"{tuple(e for e in ENCODINGS if (e == 'single') != pair)})")
        encoded = []
        if encoding in ("single", "cross", "both"):
            encoded.append(tokenizer.encode(*examples.texts))
        if encoding in ("bi", "both"):
            encoded += [tokenizer.encode(column) for column in examples.texts]
        self.segments = [ids for ids, _ in encoded]
        # examples longer than the tokenizer's max_length in any segment (cut when encoded)
        self.truncated = int(np.any([cut for _, cut in encoded], axis=0).sum())
        self.lengths = np.array([sum(len(seg[i][0]) for seg in self.segments)
                                 for i in range(len(examples))])
        self.labels = None if examples.labels is None else torch.as_tensor(
            examples.labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: np.ndarray) -> Batch:
        segments = [pad_batch([seg[i] for i in indices], self.pad_id) for seg in self.segments]
        labels = None if self.labels is None else self.labels[torch.as_tensor(indices)]
        return Batch(self.name, segments, labels, indices)

    def bucketed_batches(self, batch_size: int, generator: np.random.Generator,
                         bucket_batches: int = 50) -> list[np.ndarray]:
        """Shuffled batches whose members have similar lengths, so little goes to padding.

        Shuffle, cut into buckets of `bucket_batches` batches, sort each bucket by length,
        cut it into batches, shuffle the batch order."""
        order = generator.permutation(len(self))
        batches = []
        bucket = batch_size * bucket_batches
        for start in range(0, len(order), bucket):
            chunk = order[start:start + bucket]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        return [batches[i] for i in generator.permutation(len(batches))]

    def sorted_batches(self, batch_size: int) -> list[np.ndarray]:
        """Evaluation batches: sorted by length, deterministic."""
        order = np.argsort(self.lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
