"""`minbert data convert | label | fetch`: the training data's command-line side (the
work is in convert.py, labelling.py and fetch.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("convert", help="SNLI jsonl or Yelp CSV -> a task file")
    q.add_argument("kind", choices=["snli", "yelp"])
    q.add_argument("source", help="snli_1.0_train.jsonl, or yelp_review_full_csv/train.csv")
    q.add_argument("out", help="the task file to write, e.g. data/snli-train.csv")
    q = data.add_parser("label", help="one task's training texts labelled by trained runs "
                        "for another task: a distillation transfer set")
    q.add_argument("runs", nargs="+", help="the teachers: run folders (a --seeds or "
                   "specialists folder is its seeds' ensemble)")
    q.add_argument("--task", required=True, help="the task whose labels to write, e.g. sts")
    texts = q.add_mutually_exclusive_group(required=True)
    texts.add_argument("--texts-of", help="the built-in task whose training texts to label, "
                       "e.g. quora")
    texts.add_argument("--texts", help="a file of texts to label: one sentence a line, or a "
                       ".csv/.tsv table naming the task's text columns (as predict reads)")
    q.add_argument("--columns", help="--texts: its table's text columns, e.g. review or "
                   "q1,q2 (default: the task's)")
    q.add_argument("--out", required=True, help="the task file to write")
    q.add_argument("--data-dir", help="--texts-of: where its task files are (default: as "
                   "data.dir)")
    q.add_argument("--validation", type=float, default=0.1, help="--texts-of: leave out the "
                   "share of its training texts a run holds out for validation "
                   "(data.validation; default 0.1; 0 labels every example)")
    q.add_argument("--validation-seed", type=int, default=0, help="--texts-of: "
                   "data.validation_seed")
    q = data.add_parser("fetch", help="download the datasets (needs a network and `datasets`)")
    q.add_argument("datasets", nargs="*", default=["sst", "quora", "sts"],
                   help="some of sst quora sts snli yelp (default: sst quora sts)")
    q.add_argument("--out", default="data", help="output folder (default ./data)")
    q.add_argument("--seed", type=int, default=0, help="seed of the 10%% Quora subset")


def run(args) -> int:
    if args.data_command == "convert":
        from minbert.convert import convert
        report = convert(args.kind, args.source, args.out)
        print(f"wrote {args.out}: {report}")
    elif args.data_command == "label":
        from minbert.config import default_data_dir
        from minbert.labelling import label, label_file
        if args.columns and not args.texts:
            raise ValueError("--columns names the columns of a --texts table; give --texts")
        if args.texts:
            rows, teachers = label_file(args.runs, args.task, args.texts, args.out,
                                        progress=True,
                                        columns=args.columns and args.columns.split(","))
        else:
            rows, teachers = label(args.runs, args.task, args.texts_of,
                                   args.data_dir or default_data_dir(), args.out,
                                   args.validation, args.validation_seed, progress=True)
        print(f"wrote {args.out}: {rows:,} {args.texts_of or args.texts} examples labelled "
              f"for {args.task} by the mean of {teachers} run(s)")
    else:
        from minbert.fetch import fetch
        counts = fetch(args.datasets, args.out, seed=args.seed)
        for file, n in counts.items():
            print(f"wrote {Path(args.out) / file} ({n:,} rows)")
    return 0
