"""Extra training data in the task file format: SNLI as similarity, Yelp stars as sentiment.

`minbert data convert snli|yelp IN OUT` turns the original release files into files the
built-in tasks read, to be added to a task's `train_files` in a config:

- SNLI 1.0 jsonl (`snli_1.0_train.jsonl`): every annotator vote is mapped contradiction → 0,
  neutral → 3, entailment → 5 and the votes are averaged into a 0–5 similarity (as in the
  report). Pairs without a gold label (`"-"`: the annotators did not agree) are skipped
  and counted. A line that is not JSON, lacks a field or carries an unknown vote is an
  error naming the file and line: a wrong label is never written.
- Yelp 5-class CSV (`yelp_review_full_csv/train.csv`: `"stars","text"`, no header; or
  with a header naming the columns): stars 1–5 → sentiment 0–4. Reviews with empty text
  are skipped and counted; stars outside 1–5 are an error naming the file and line.

The writer is the CS224N layout: tab-separated, a header whose first cell is empty (the
pandas index), an `id` column, then the text and label columns.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from minbert.data import DataError, read_lines, read_rows

SNLI_VOTES = {"contradiction": 0.0, "neutral": 3.0, "entailment": 5.0}
SIMILARITY_COLUMNS = ("sentence1", "sentence2", "similarity")
SENTIMENT_COLUMNS = ("sentence", "sentiment")


@dataclass
class ConversionReport:
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str):
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def __str__(self) -> str:
        skipped = ", ".join(f"{n:,} {reason}" for reason, n in self.skipped.items())
        return f"{self.written:,} rows written" + (f"; skipped {skipped}" if skipped else "")


def make_id(source: str, key: str) -> str:
    """A 25-hex-digit id, like the CS224N files' hashed ids, stable for a source row."""
    return hashlib.sha1(f"{source}:{key}".encode()).hexdigest()[:25]


def clean_text(text: str) -> str:
    """One line of text: newlines (real or Yelp's literal `\\n`) and runs of space collapsed."""
    return " ".join(text.replace("\\n", " ").split())


def write_task_file(path: str | Path, columns: Sequence[str],
                    rows: Iterable[tuple[str, ...]]) -> int:
    """Writes (id, *columns) rows in the CS224N layout; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fp:
            writer = csv.writer(fp, delimiter="\t", lineterminator="\n")
            writer.writerow(["", "id", *columns])
            for count, row in enumerate(rows, start=1):
                writer.writerow([count - 1, *row])
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed conversion leaves no half-written file
        raise
    tmp.replace(path)
    return count


def snli_rows(path: str | Path, report: ConversionReport):
    """(id, sentence1, sentence2, similarity) from an SNLI jsonl file."""
    for line_number, line in enumerate(read_lines(Path(path)), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: not a JSON object (got {type(record).__name__})")
        fields = {"sentence1": str, "sentence2": str, "gold_label": str,
                  "annotator_labels": list}
        missing = [k for k in fields if k not in record]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        wrong = [f"{k} ({record[k]!r})" for k, kind in fields.items()
                 if not isinstance(record[k], kind)]
        if wrong:
            raise DataError(f"{where}: {', '.join(wrong)}: sentences and gold_label must "
                            "be strings, annotator_labels a list")
        if record["gold_label"] == "-":
            report.skip("pairs without a gold label")
            continue
        votes = record["annotator_labels"]
        unknown = [v for v in votes if not isinstance(v, str) or v not in SNLI_VOTES]
        if not votes or unknown:
            raise DataError(f"{where}: annotator_labels {votes!r} must be non-empty and "
                            f"each one of {sorted(SNLI_VOTES)}")
        first, second = clean_text(record["sentence1"]), clean_text(record["sentence2"])
        if not first or not second:
            report.skip("pairs with an empty sentence")
            continue
        score = sum(SNLI_VOTES[v] for v in votes) / len(votes)
        key = record.get("pairID") or str(line_number)
        report.written += 1
        yield make_id("snli", key), first, second, f"{score:.3f}"


def yelp_rows(path: str | Path, report: ConversionReport):
    """(id, sentence, sentiment) from a Yelp 5-class CSV file."""
    star_col, text_col, width = 0, 1, 2
    for line, row in read_rows(path, delimiter=","):
        where = f"{path}, line {line}"
        if line == 1 and not row[0].strip().isdigit():
            header = [c.strip().lower() for c in row]  # a header: find the columns
            star_col = _column(header, ("stars", "class_index", "label", "rating"), where)
            text_col = _column(header, ("text", "review_text", "review"), where)
            width = len(header)
            continue
        if len(row) != width:
            raise DataError(f"{where}: expected {width} fields (stars and text), got "
                            f"{len(row)} field(s)")
        stars = row[star_col].strip()
        if stars not in {"1", "2", "3", "4", "5"}:
            raise DataError(f"{where}: stars {stars!r} is not one of 1-5")
        text = clean_text(row[text_col])
        if not text:
            report.skip("reviews with empty text")
            continue
        report.written += 1
        yield make_id("yelp", str(line)), text, str(int(stars) - 1)


def _column(header: list[str], names: Sequence[str], where: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise DataError(f"{where}: the header {header} has none of the columns {list(names)}")


CONVERTERS = {"snli": (snli_rows, SIMILARITY_COLUMNS), "yelp": (yelp_rows, SENTIMENT_COLUMNS)}


def convert(kind: str, source: str | Path, out: str | Path) -> ConversionReport:
    if kind not in CONVERTERS:
        raise ValueError(f"unknown dataset {kind!r}; use one of {sorted(CONVERTERS)}")
    if not Path(source).is_file():
        raise DataError(f"{source}: no such file")
    if Path(out).is_dir():
        raise DataError(f"{out}: is a folder; give the path of the file to write, e.g. "
                        f"{Path(out) / (kind + '-train.csv')}")
    if Path(out).exists() and Path(out).samefile(source):
        raise DataError(f"{out}: is the source file; write the converted file elsewhere")
    rows, columns = CONVERTERS[kind]
    report = ConversionReport()
    write_task_file(out, columns, rows(source, report))
    return report
