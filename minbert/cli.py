"""`minbert train | pretrain | tune | evaluate | predict | report | compare | export |
data`: each reads a TOML config (or a run folder's saved one); `section.key=value`
arguments override it."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from minbert.config import PRECISIONS, ConfigKeyError, load_config


def _config(args, run_dir_key: str = "run_dir"):
    """The config of --config with the overrides, and --run-dir set as given (a path is
    data, never pasted into TOML)."""
    config = load_config(args.config, list(args.overrides)
                         + (["train.tensorboard=true"] if getattr(args, "tensorboard", False)
                            else []))
    if args.run_dir:
        if run_dir_key == "run_dir":
            config.run_dir = args.run_dir
        else:
            config.pretrain.run_dir = args.run_dir
    return config


def cmd_train(args):
    from minbert import recipes
    from minbert.build import build_plan
    if args.finetune is not None and args.finetune < 1:
        raise ValueError(f"--finetune {args.finetune}: the fine-tuning's epochs, at least 1")
    chosen = [flag for flag, on in (("--specialists", args.specialists),
                                    ("--finetune", args.finetune), ("--distill", args.distill))
              if on]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)}: choose one (--finetune and --distill "
                         "train the specialists too)")
    seeds = _seeds(args) if args.seeds is not None else None
    config = _config(args)
    if args.distill:  # its [regularizers.distill] are the student's options, teachers to come
        return recipes.distilled(config, seeds, args.overwrite, args.config or "flags")
    plan = build_plan(config, args.config or "flags")  # every method checked, once
    if args.finetune:
        return recipes.finetuned(plan, args.finetune, seeds, args.overwrite)
    if args.specialists:
        return recipes.specialists(plan, seeds, args.overwrite)
    if seeds is not None:
        return recipes.seeds(plan, seeds, args.overwrite)
    return recipes.one(plan, args.overwrite)


def _seeds(args) -> list[int]:
    try:
        return [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give integers separated by commas, "
                         "e.g. 0,1,2") from None


def cmd_pretrain(args):
    from minbert.mlm import pretrain
    out = pretrain(_config(args, "pretrain.run_dir"), overwrite=args.overwrite)
    if out.name == "model":
        print(f"\nwrote {out}; fine-tune from it with model.checkpoint=\"{out}\"")
    else:
        print(f"\nstopped at pretrain.max_steps; the same command continues {out}")
    return 0


def cmd_tune(args):
    from minbert.tuning import Study
    from minbert.tuning.study import STORAGE_ENV
    study = Study.from_config(args.config, args.overrides, run_dir=args.run_dir,
                              trials=args.trials, jobs=args.jobs,
                              storage=args.storage or os.environ.get(STORAGE_ENV))
    summary = study.run(worker=args.worker, threads=args.threads)
    if args.worker is None:
        print(f"\nstudy {study.name!r} ({study.folder}): {summary['trials']} trials, "
              + ", ".join(f"{n} {s}" for s, n in summary["states"].items()))
        if "best_trial" in summary:
            print(f"best: trial {summary['best_trial']}, validation overall "
                  f"{summary['best_value']:.4f}: {summary['params']}")
            print(f"its config: {study.folder / 'best.toml'}; every trial: "
                  f"{study.folder / 'trials.csv'}")
    return 0


def _predictor(args, folders):
    """The runs as one predictor (an ensemble when there are several), each folder checked
    before any model loads."""
    from minbert.devices import resolve_device
    from minbert.loading import check_run_folder, load_run
    from minbert.predictor import Predictor
    from minbert.runs import expand_seeds
    given, folders = folders, expand_seeds(folders)
    if len(folders) != len(given):
        print(f"--seeds folder(s): the ensemble of {len(folders)} seed runs", file=sys.stderr)
    for folder in folders:
        check_run_folder(folder)
    if args.device:  # a device this machine lacks fails before the models load
        resolve_device(args.device, "--device")
    predictor = Predictor([load_run(folder) for folder in folders], args.device,
                          args.precision)
    counts = {name: len(owners) for name, owners in predictor.members.items()}
    shown = ""
    if len(folders) > 1:
        shown = f", ensemble of {len(folders)} runs"
        if any(n != len(folders) for n in counts.values()):  # members with other tasks
            shown += f" ({', '.join(f'{name}: {n}' for name, n in counts.items())})"
    print(f"device {predictor.device}, precision {predictor.precision}{shown}",
          file=sys.stderr)
    return predictor


def _inputs(examples):
    """A file's examples as predictor inputs: sentences, or (first, second) pairs."""
    return examples.texts[0] if len(examples.texts) == 1 else list(zip(*examples.texts))


def cmd_evaluate(args):
    from minbert.evaluation import format_table, overall_score
    from minbert.loading import check_run_folder
    from minbert.outputs import write_evaluation
    from minbert.runs import expand_seeds, write_text_atomic, writable_folder
    from minbert.tasks import read_split
    members = expand_seeds(args.run_dirs)
    single = len(members) == 1 and not args.average
    if single:  # its dev-metrics.json goes into the run folder
        writable_folder(check_run_folder(members[0]).path, "run")
    if args.average and not args.out:
        raise ValueError("--average writes the averaged model into --out FOLDER; give one")
    out = _evaluation_folder(args) if args.out else None
    scored = args.run_dirs
    if args.average:  # one model, the members' mean weights (minbert/soup.py), scored alone
        from minbert.soup import write_average
        scored = [str(write_average(out, members).path)]
    predictor = _predictor(args, scored)
    metrics, predictions = {}, {}
    for name, task in predictor.tasks.items():
        config = predictor.members[name][0].config  # the data of the first run with the task
        examples = read_split(config, task, "dev")
        if examples is None:
            continue
        prediction = predictor.predict(name, _inputs(examples),
                                       config.data.eval_batch_size, progress=True)
        metrics[name] = task.metric(prediction.values, examples.labels)
        predictions[name] = (examples.ids, prediction.values)
    metrics["overall"] = overall_score(metrics, predictor.tasks)
    print(format_table(metrics, predictor.tasks))
    if single:
        write_text_atomic(Path(members[0]) / "dev-metrics.json",
                          json.dumps(metrics, indent=2) + "\n")
    if out is not None:  # an evaluation folder that compare and report read like a run's
        record = {"members": members, "averaged": bool(args.average),
                  "precision": predictor.precision, "dev": metrics}
        write_evaluation(out, {**_ensemble_config(predictor), "run_dir": str(out)}, record,
                         predictor.tasks, predictions)
        print(f"wrote {out}: " + ("the averaged model (best.pt: predict, export, minbert.load), "
                                  if args.average else "") +
              f"dev predictions, dev-metrics.json (`minbert compare {out} RUN`)")
    return 0


def _ensemble_config(predictor) -> dict:
    """The first member's config with every member's tasks (each task's settings from the
    first member that has it): what compare and report rebuild an evaluation's tasks from."""
    config = predictor.runs[0].config.to_dict()
    config["data"]["tasks"] = list(predictor.tasks)
    settings = config.setdefault("tasks", {})
    for name, owners in predictor.members.items():
        own = owners[0].config.to_dict().get("tasks", {}).get(name)
        if own is not None:
            settings[name] = own
        else:
            settings.pop(name, None)
    return config


def _evaluation_folder(args) -> Path:
    """--out of evaluate: a new folder, or one that an earlier evaluate wrote; never a run."""
    from minbert.runs import RunError, RunFolder, writable_folder
    out = Path(args.out)
    if any(out.resolve() == Path(d).resolve() for d in args.run_dirs):
        raise RunError(f"--out {out}: is one of the runs evaluated; give a new folder")
    folder = RunFolder(out)
    if folder.log_file.is_file() and not folder.is_evaluation():
        raise RunError(f"--out {out}: holds a training run; give a new folder")
    if not folder.log_file.is_file() and folder.holds_run():
        raise RunError(f"--out {out}: holds run files; give a new folder")
    return writable_folder(out, "evaluation")


def cmd_predict(args):
    from minbert.loading import check_run_folder
    from minbert.outputs import prediction_file, write_prediction_file
    from minbert.runs import expand_seeds, writable_folder
    if args.task or args.input:
        return _predict_new_text(args)
    members = expand_seeds(args.run_dirs)
    if len(members) > 1 and not args.out:
        raise ValueError("an ensemble's leaderboard files need --out FOLDER")
    folder = check_run_folder(members[0])
    # RUN/leaderboard by default: predictions/ holds what training scored (compare, report)
    out = writable_folder(args.out or folder.path / "leaderboard", "output")
    predictor = _predictor(args, args.run_dirs)
    for split in args.splits:
        for name, task in predictor.tasks.items():
            config = predictor.members[name][0].config
            file = task.dev_file if split == "dev" else task.test_file
            if not file or not (Path(config.data.dir) / file).is_file():
                print(f"skip {name} {split}: no file {Path(config.data.dir) / (file or '?')}")
                continue
            examples = task.read(Path(config.data.dir) / file, labelled=split == "dev")
            prediction = predictor.predict(name, _inputs(examples),
                                           config.data.eval_batch_size, progress=True)
            path = prediction_file(out, task, split)
            write_prediction_file(path, task, examples.ids, prediction.values)
            print(f"wrote {path} ({len(examples)} rows)")
    return 0


def _predict_new_text(args):
    from minbert.predictor import OUTPUT_FORMATS, read_inputs, write_outputs
    from minbert.runs import writable_folder
    if not (args.task and args.input):
        raise ValueError("predicting on new text needs both --task and --input FILE (or -)")
    if args.out:
        if Path(args.out).suffix.lower() not in OUTPUT_FORMATS:
            raise ValueError(f"--out {args.out}: write a {', '.join(OUTPUT_FORMATS)} file")
        writable_folder(Path(args.out).resolve().parent, "output")
    predictor = _predictor(args, args.run_dirs)
    if args.task not in predictor.tasks:
        raise ValueError(f"--task {args.task}: the run has {', '.join(predictor.tasks)}")
    task = predictor.tasks[args.task]
    columns = args.columns.split(",") if args.columns else list(task.text_columns)
    if len(columns) != len(task.text_columns):
        raise ValueError(f"--columns {args.columns}: task {args.task} reads "
                         f"{len(task.text_columns)} text column(s)")
    inputs, ids = read_inputs(args.input, columns, table=True if args.columns else None)
    prediction = predictor.predict(args.task, inputs, progress=True)
    write_outputs(args.out, inputs, prediction, ids=ids)
    if args.out:
        print(f"wrote {args.out} ({len(inputs)} rows)", file=sys.stderr)
    return 0


def cmd_report(args):
    from minbert.reports import write_report
    from minbert.tuning import is_study, write_study_report
    studies = [d for d in args.run_dirs if is_study(d)]
    runs = [d for d in args.run_dirs if not is_study(d)]
    for folder in studies:  # a study's report, in its own subfolder when runs come too
        out = Path(args.out) / Path(folder).name if len(studies) > 1 or runs else args.out
        print(f"wrote {write_study_report(folder, out, args.storage)} and "
              f"{Path(out) / 'trials.md'}")
    if runs:  # a --seeds folder: each of its seeds is a row
        from minbert.runs import expand_seeds
        index = write_report(expand_seeds(runs), args.out)
        print(f"wrote {index} and {Path(args.out) / 'ablation.md'}")
    return 0


def cmd_compare(args):
    from minbert.compare import compare_folders, format_differences
    rows, how = compare_folders(args.run_a, args.run_b, args.resamples, args.seed)
    print(format_differences(rows, args.run_a, args.run_b, how))
    return 0


def cmd_export(args):
    from minbert.export import export
    for line in export(args.run_dir, args.out, task=args.task, onnx=args.onnx):
        print(line)
    return 0


def cmd_data(args):
    from minbert.data_commands import run
    return run(args)


EXAMPLES = {
    "train": "minbert train --config configs/quick.toml\n"
             "  minbert train --config configs/lean-cpu.toml --seeds 0,1,2 train.lr=3e-5",
    "pretrain": "minbert pretrain --config configs/quick.toml pretrain.epochs=1",
    "tune": "minbert tune --config configs/tune-quick.toml --trials 20 --jobs 2",
    "evaluate": "minbert evaluate runs/quick\n"
                "  minbert evaluate runs/s/seed-0 runs/s/seed-1 runs/s/seed-2 --out runs/ens\n"
                "  minbert evaluate runs/s --average --out runs/soup      # one model",
    "predict": "minbert predict runs/quick                    # leaderboard files\n"
               "  minbert predict runs/quick --task sst --input reviews.txt --out sst.csv",
    "report": "minbert report runs/quick runs/lean-cpu --out reports/ablation",
    "compare": "minbert compare runs/lean-cpu runs/quick",
    "export": "minbert export runs/quick exports/quick --onnx",
    "data": "minbert data convert snli snli_1.0_train.jsonl data-extra/snli-train.csv\n"
            "  minbert data label runs/ld/specialist-sts --task sts --texts-of quora "
            "--out silver.csv",
}


def _command(sub, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line help, a description and an example (`text` as a
    help string: a literal % written %%, which the description prints as %)."""
    words = text.replace("%%", "%")
    return sub.add_parser(name, help=text, description=words[0].upper() + words[1:] + ".",
                          epilog=f"example:\n  {EXAMPLES[name]}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from minbert import __version__
    parser = argparse.ArgumentParser(prog="minbert", description=__doc__)
    parser.add_argument("--version", action="version", version=f"minbert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = _command(sub, "train", "train on the config's tasks, evaluating on dev each epoch")
    p.add_argument("--config", help="TOML config file (configs/*.toml)")
    p.add_argument("--run-dir", help="run folder (overrides run_dir); resumes if it holds a "
                                     "checkpoint")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard (RUN_DIR/tensorboard)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run the folder already holds instead of refusing")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: one run per seed "
                                   "in RUN_DIR/seed-N, then a summary (RUN_DIR/seeds.json)")
    p.add_argument("--specialists", action="store_true",
                   help="one run per task of the config, that task alone (RUN_DIR/specialist-"
                        "TASK; with --seeds, a seeds folder each): compare a multi-task run "
                        "with them, or distil them into one")
    p.add_argument("--distill", action="store_true",
                   help="BAM: the specialists (as --specialists), then one multi-task model "
                        "taught by them with teacher annealing in RUN_DIR/student; compare "
                        "RUN_DIR/student with RUN_DIR")
    p.add_argument("--finetune", type=int, nargs="?", const=1, metavar="EPOCHS",
                   help="MT-DNN: the multi-task run in RUN_DIR/multitask, then each task "
                        "fine-tuned alone from it for EPOCHS (default 1) in RUN_DIR/"
                        "specialist-TASK; compare RUN_DIR with RUN_DIR/multitask")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-5")
    p.set_defaults(func=cmd_train)
    p = _command(sub, "pretrain", "continued masked-LM pretraining of the encoder on the "
                                        "tasks' sentences and/or text files ([pretrain])")
    p.add_argument("--config", help="TOML config (its [pretrain] section, tasks and data)")
    p.add_argument("--run-dir", help="the pretraining's run folder (overrides pretrain.run_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the pretraining the folder holds instead of refusing")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. pretrain.epochs=2")
    p.set_defaults(func=cmd_pretrain)
    p = _command(sub, "tune", "hyperparameter search over the config's [tune.space] "
                                    "(Optuna), judged on the held-out validation split")
    p.add_argument("--config", required=True, help="TOML config with a [tune.space] table")
    p.add_argument("--run-dir", help="the study folder (overrides run_dir)")
    p.add_argument("--trials", type=int, help="finished trials the study should hold "
                                              "(default tune.trials)")
    p.add_argument("--storage", help="an Optuna storage URL shared by workers: "
                                     "postgresql://..., mysql://..., sqlite:///FILE or "
                                     "journal:FILE (default: RUN_DIR/study.db)")
    p.add_argument("--jobs", type=int, help="parallel trials on this machine, each with its "
                                            "share of the cores (default tune.jobs)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --jobs
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    p.set_defaults(func=cmd_tune)
    for name, func, text in (
            ("evaluate", cmd_evaluate, "dev metrics of a run's best model (several runs: "
                                       "their ensemble, or with --average their mean weights)"),
            ("predict", cmd_predict, "leaderboard prediction files, or predictions on new "
                                     "text with --task and --input")):
        p = _command(sub, name, text)
        p.add_argument("run_dirs", nargs="+", metavar="run_dir",
                       help="run folder(s) written by `minbert train`; several: an ensemble")
        p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
        p.add_argument("--precision", choices=PRECISIONS,
                       help="autocast precision (default: the run's train.precision)")
        if name == "evaluate":
            p.add_argument("--out", help="also write the dev predictions, metrics and config "
                                         "to this folder (an ensemble's, say), for `minbert "
                                         "compare` and `minbert report`")
            p.add_argument("--average", action="store_true",
                           help="one model whose weights are the runs' mean (a model soup: "
                                "alike runs, e.g. seeds), written into --out and scored")
        if name == "predict":
            p.add_argument("--out", help="leaderboard mode: output folder (default "
                                         "RUN_DIR/leaderboard); new text: a .csv, .tsv or "
                                         ".jsonl file (default: CSV on stdout)")
            p.add_argument("--splits", nargs="+", default=["dev", "test"],
                           choices=["dev", "test"])
            p.add_argument("--task", help="new text: the task to predict (sst, quora, ...)")
            p.add_argument("--input", help="new text: a file of one sentence a line, or a "
                                           "CSV/TSV of pairs with a header; - for stdin")
            p.add_argument("--columns", help="new text: the pair columns, e.g. q1,q2 "
                                             "(default: the task's text columns)")
        p.set_defaults(func=func)
    p = _command(sub, "report", "tables and figures (HTML) from one or more runs")
    p.add_argument("run_dirs", nargs="+", help="run folders written by `minbert train`, or "
                                               "study folders written by `minbert tune`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--storage", help="a study's storage URL, when it holds a password")
    p.set_defaults(func=cmd_report)
    p = _command(sub, "compare", "two runs' dev differences with paired-bootstrap "
                                       "95%% intervals")
    p.add_argument("run_a", help="run folder, evaluation folder or --seeds folder (A)")
    p.add_argument("run_b", help="any of those (B); the table gives A − B on the tasks "
                                 "both hold")
    p.add_argument("--resamples", type=int, default=10_000,
                   help="bootstrap resamples of the dev examples (1 to 1,000,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.set_defaults(func=cmd_compare)
    p = _command(sub, "export", "the fine-tuned encoder as an HF-format folder + heads")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--task", help="write this task alone in its tools' format: a transformers "
                                  "BertForSequenceClassification folder (a head on the pooler: "
                                  "tasks.TASK.pooling = \"pooler\"; CrossEncoder loads it too), "
                                  "or, bi-encoded by cosine, a SentenceTransformer folder")
    p.add_argument("--onnx", action="store_true",
                   help="also ONNX graphs for onnxruntime: the encoder once "
                        "(OUT/onnx/encoder.onnx) and each task's head (OUT/onnx/TASK.onnx, "
                        "probabilities or scores out)")
    p.set_defaults(func=cmd_export)
    p = _command(sub, "data", "convert, label (by teachers) or fetch training data")
    from minbert.data_commands import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_data)
    return parser


_PACKAGE = str(Path(__file__).resolve().parent)
_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """minbert's own warnings as one line (`minbert: warning: ...`); others as Python
    shows them."""
    from minbert.data import MinbertWarning
    if issubclass(category, MinbertWarning) or str(Path(filename).resolve()).startswith(
            _PACKAGE):
        return f"minbert: warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _one_line_warning
    from minbert.compare import CompareError
    from minbert.data import DataError
    from minbert.onnx_backend import OnnxExportError
    from minbert.predictor import PredictError
    from minbert.pretrained import CheckpointError
    from minbert.runs import RunError
    from minbert.training import TrainingError
    from minbert.tuning.space import TuneError
    try:
        return args.func(args)
    except (ConfigKeyError, DataError, CheckpointError, CompareError, OnnxExportError,
            PredictError, RunError, TrainingError, TuneError, FileNotFoundError, ValueError) as e:
        print(f"minbert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, not the code: a full disk, a permission, a lost mount
        where = f"{e.filename}: " if e.filename else ""
        print(f"minbert {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minbert {args.command}: interrupted; a run resumes from its last checkpoint "
              "when the same command is given again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
