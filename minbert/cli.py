"""`minbert train | evaluate | predict | report | export | data`: each reads a TOML config
(or a run folder's saved one); `section.key=value` arguments override it."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from minbert.config import ConfigKeyError, build_config, load_config


def _load_run(run_dir: Path):
    """The config, tasks and best model of a finished (or running) run folder."""
    from minbert.training import build_model, build_tasks
    config_file, best = run_dir / "config.json", run_dir / "best.pt"
    for path in (config_file, best):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {run_dir} a run folder with at "
                                    "least one finished epoch?")
    config = build_config(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["model"])
    return config, tasks, model.eval(), tokenizer


def cmd_train(args):
    from minbert.evaluation import format_table
    from minbert.training import build_tasks, train
    overrides = list(args.overrides) + ([f'run_dir="{args.run_dir}"'] if args.run_dir else [])
    overrides += ["train.tensorboard=true"] if args.tensorboard else []
    config = load_config(args.config, overrides)
    result = train(config)
    if "overall" in result and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 says it
        print(f"\nbest dev metrics ({config.run_dir}/best.pt):")
        print(format_table(result, build_tasks(config)))
        if "quora" in result and config.model.checkpoint == "minilm-l6":
            print("note: all-MiniLM-L6-v2 was pre-trained on sentence pairs that include Quora "
                  "duplicates, so its Quora accuracy is not a clean transfer result")
    return 0


def cmd_evaluate(args):
    from minbert.evaluation import evaluate, format_table, write_json
    from minbert.training import encode_split, resolve_device
    run_dir = Path(args.run_dir)
    config, tasks, model, tokenizer = _load_run(run_dir)
    device = resolve_device(args.device or config.train.device)
    model.to(device)
    dev = encode_split(config, tasks, tokenizer, "dev")
    metrics, _ = evaluate(model, tasks, dev, config.data.eval_batch_size, device)
    print(format_table(metrics, tasks))
    write_json(run_dir / "dev-metrics.json", metrics)
    return 0


def cmd_predict(args):
    from minbert.evaluation import predict, write_predictions
    from minbert.training import encode_split, resolve_device
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    config, tasks, model, tokenizer = _load_run(run_dir)
    device = resolve_device(args.device or config.train.device)
    model.to(device)
    config.data.dev_limit = 0  # leaderboard files cover the whole split
    for split in args.splits:
        for name, task in tasks.items():
            file = task.dev_file if split == "dev" else task.test_file
            if not file or not (Path(config.data.dir) / file).is_file():
                print(f"skip {name} {split}: no file {Path(config.data.dir) / (file or '?')}")
                continue
            data = encode_split(config, {name: task}, tokenizer, split,
                                labelled=split == "dev")[name]
            predictions = predict(model, task, data, config.data.eval_batch_size, device)
            path = out / f"{task.output_prefix}-{split}-output.csv"
            write_predictions(path, task, data.examples.ids, predictions)
            print(f"wrote {path} ({len(predictions)} rows)")
    return 0


def cmd_report(args):
    from minbert.reports import write_report
    index = write_report(args.run_dirs, args.out)
    print(f"wrote {index} and {Path(args.out) / 'ablation.md'}")
    return 0


def cmd_export(args):
    from minbert.export import export_run
    config, _, model, _ = _load_run(Path(args.run_dir))
    out = export_run(model, config, args.out)
    print(f"wrote {out} (HF BertModel folder) with heads.safetensors and heads.json")
    return 0


def cmd_data(args):
    if args.data_command == "convert":
        from minbert.convert import convert
        report = convert(args.kind, args.source, args.out)
        print(f"wrote {args.out}: {report}")
    else:
        from minbert.fetch import fetch
        counts = fetch(args.datasets, args.out, seed=args.seed)
        for file, n in counts.items():
            print(f"wrote {Path(args.out) / file} ({n:,} rows)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minbert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on the config's tasks, evaluating on dev each epoch")
    p.add_argument("--config", help="TOML config file (configs/*.toml)")
    p.add_argument("--run-dir", help="run folder (overrides run_dir); resumes if it holds a "
                                     "checkpoint")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard (RUN_DIR/tensorboard)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-5")
    p.set_defaults(func=cmd_train)
    for name, func, text in (("evaluate", cmd_evaluate, "dev metrics of a run's best model"),
                             ("predict", cmd_predict, "leaderboard prediction files")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_dir", help="a run folder written by `minbert train`")
        p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
        if name == "predict":
            p.add_argument("--out", help="output folder (default RUN_DIR/predictions)")
            p.add_argument("--splits", nargs="+", default=["dev", "test"],
                           choices=["dev", "test"])
        p.set_defaults(func=func)
    p = sub.add_parser("report", help="tables and figures (HTML) from one or more runs")
    p.add_argument("run_dirs", nargs="+", help="run folders written by `minbert train`")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="the fine-tuned encoder as an HF-format folder + heads")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("data", help="convert extra training data; fetch the datasets")
    data = p.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("convert", help="SNLI jsonl or Yelp CSV -> a task file")
    q.add_argument("kind", choices=["snli", "yelp"])
    q.add_argument("source", help="snli_1.0_train.jsonl, or yelp_review_full_csv/train.csv")
    q.add_argument("out", help="the task file to write, e.g. data/snli-train.csv")
    q = data.add_parser("fetch", help="download the datasets (needs a network and `datasets`)")
    q.add_argument("datasets", nargs="*", default=["sst", "quora", "sts"],
                   help="some of sst quora sts snli yelp (default: sst quora sts)")
    q.add_argument("--out", default="data", help="output folder (default ./data)")
    q.add_argument("--seed", type=int, default=0, help="seed of the 10%% Quora subset")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    from minbert.checkpoints import CheckpointError
    from minbert.data import DataError
    from minbert.training import TrainingError
    try:
        return args.func(args)
    except (ConfigKeyError, DataError, CheckpointError, TrainingError, FileNotFoundError,
            ValueError) as e:
        print(f"minbert {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
