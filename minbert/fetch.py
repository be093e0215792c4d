"""`minbert data fetch`: the benchmark datasets (and the extra ones) from the Hugging Face
hub through the `datasets` library, written in the CS224N file names, format and layout so
that every command runs on them with `data.dir` pointing at the folder.

What comes from where, and how it differs from the CS224N files:

- sst: SetFit/sst5 → ids-sst-{train,dev,test-student}.csv; the standard SST-5 split
  (8,544 / 1,101 / 2,210), the one CS224N uses.
- quora: nyu-mll/glue, qqp → quora-{train,dev,test-student}.csv and quora-train-subset.csv;
  GLUE's QQP split, not CS224N's; the subset is a seeded 10% sample of train (the
  report's setting, and the file the built-in task trains on).
- sts: nyu-mll/glue, stsb → sts-{train,dev,test-student}.csv; GLUE's STS-B split
  (5,749 / 1,500 / 1,379), not CS224N's.
- snli: stanfordnlp/snli → snli-train.csv; the hub copy has gold labels only (no
  annotator votes), mapped to 0 / 3 / 5; `minbert data convert snli` averages the votes.
- yelp: Yelp/yelp_review_full → yelp-train.csv; stars 1–5 as sentiment 0–4.

Test files are written without their label column, as the CS224N ones are.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np

from minbert.convert import SENTIMENT_COLUMNS, SIMILARITY_COLUMNS, clean_text, make_id, \
    write_task_file
from minbert.data import DataError

PARAPHRASE_COLUMNS = ("sentence1", "sentence2", "is_duplicate")
SNLI_SCORES = {0: "5.0", 1: "3.0", 2: "0.0"}  # entailment, neutral, contradiction; -1: none


@dataclass(frozen=True)
class HubSource:
    repo: str
    config: str | None
    text_fields: tuple[str, ...]       # the hub dataset's columns, in our column order
    columns: tuple[str, ...]           # ours: text columns then the label column
    label: Callable[[object], str | None]  # hub label -> our label text; None skips the row
    splits: tuple[tuple[str, str, bool], ...]  # (hub split, our file, labelled)


SOURCES: dict[str, HubSource] = {
    "sst": HubSource("SetFit/sst5", None, ("text",), SENTIMENT_COLUMNS, lambda y: str(int(y)),
                     (("train", "ids-sst-train.csv", True),
                      ("validation", "ids-sst-dev.csv", True),
                      ("test", "ids-sst-test-student.csv", False))),
    "quora": HubSource("nyu-mll/glue", "qqp", ("question1", "question2"), PARAPHRASE_COLUMNS,
                       lambda y: f"{float(y):.1f}",
                       (("train", "quora-train.csv", True),
                        ("validation", "quora-dev.csv", True),
                        ("test", "quora-test-student.csv", False))),
    "sts": HubSource("nyu-mll/glue", "stsb", ("sentence1", "sentence2"), SIMILARITY_COLUMNS,
                     lambda y: f"{float(y):.3f}",
                     (("train", "sts-train.csv", True),
                      ("validation", "sts-dev.csv", True),
                      ("test", "sts-test-student.csv", False))),
    "snli": HubSource("stanfordnlp/snli", None, ("premise", "hypothesis"), SIMILARITY_COLUMNS,
                      lambda y: SNLI_SCORES.get(int(y)), (("train", "snli-train.csv", True),)),
    "yelp": HubSource("Yelp/yelp_review_full", None, ("text",), SENTIMENT_COLUMNS,
                      lambda y: str(int(y)), (("train", "yelp-train.csv", True),)),
}
QUORA_SUBSET = ("quora-train.csv", "quora-train-subset.csv", 0.1)


def write_dataset(name: str, dataset, out: str | Path, seed: int = 0,
                  log: Callable[[str], None] = print) -> dict[str, int]:
    """Writes one fetched dataset (a `datasets.DatasetDict`, or any mapping of split name to
    a sequence of row dicts) into `out`; returns the rows written per file and logs the
    rows skipped."""
    source, out = SOURCES[name], Path(out)
    counts = {}
    for split, file, labelled in source.splits:
        if split not in dataset:
            raise DataError(f"{source.repo}: no split {split!r} (it has {sorted(dataset)})")
        rows, skipped = [], 0
        for number, record in enumerate(dataset[split]):
            texts = [clean_text(record[f]) for f in source.text_fields]
            label = source.label(record["label"]) if labelled else None
            if (labelled and label is None) or not all(texts):
                skipped += 1  # no gold label (SNLI -1) or an empty sentence
                continue
            key = record.get("idx", number)
            rows.append((make_id(f"{name}-{split}", str(key)), *texts,
                         *([label] if labelled else [])))
        columns = source.columns if labelled else source.columns[:-1]
        counts[file] = write_task_file(out / file, columns, rows)
        if skipped:
            log(f"{file}: skipped {skipped:,} rows without a gold label or with empty text")
        if name == "quora" and file == QUORA_SUBSET[0]:
            keep = np.random.default_rng(seed).permutation(len(rows))
            keep = np.sort(keep[:round(QUORA_SUBSET[2] * len(rows))])
            counts[QUORA_SUBSET[1]] = write_task_file(out / QUORA_SUBSET[1], columns,
                                                      [rows[i] for i in keep])
    return counts


def check_online(endpoint: str | None = None, timeout: float = 5.0):
    """Fails fast, with what to do instead, when the hub cannot be reached."""
    if any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise DataError("minbert data fetch needs a network, and HF_HUB_OFFLINE or "
                        "HF_DATASETS_OFFLINE is set. " + _OFFLINE_HINT)
    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise DataError(f"cannot reach {url.hostname}:{port} ({e}); minbert data fetch "
                        "needs a network. " + _OFFLINE_HINT) from None


_OFFLINE_HINT = ("Offline, put files in the CS224N format in a folder and point data.dir "
                 "(or $MINBERT_DATA) at it.")


def fetch(names: list[str], out: str | Path, seed: int = 0, endpoint: str | None = None,
          log: Callable[[str], None] = print) -> dict[str, int]:
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; use some of {sorted(SOURCES)}")
    check_online(endpoint)
    try:
        import datasets
    except ImportError:
        raise DataError("minbert data fetch needs the `datasets` library: "
                        "pip install 'minbert[data]'") from None
    counts = {}
    for name in names:
        source = SOURCES[name]
        log(f"fetching {name} from {source.repo}" + (f" ({source.config})" if source.config
                                                     else ""))
        counts.update(write_dataset(name, datasets.load_dataset(source.repo, source.config),
                                    out, seed, log))
    return counts
