"""Several runs of one recipe. `minbert train --seeds 0,1,2` trains one ordinary run per
seed in RUN_DIR/seed-N/ and summarises them in RUN_DIR/seeds.json (per task and overall:
the mean, standard deviation and 95% t-interval of the mean across seeds).
`minbert train --specialists` trains one run per task of the config, that task alone
with the recipe's settings otherwise, in RUN_DIR/specialist-TASK/ (each a seeds folder
with --seeds): the single-task models a multi-task model is measured against, and the
teachers it may distil ([regularizers.distill] teachers = {TASK = ["RUN_DIR/specialist-TASK"]}).
`minbert train --distill` trains them, then one student in RUN_DIR/student taught by them
(and, with train.distill_transfer, on other texts they labelled, RUN_DIR/transfer-TASK.csv).

Every seed is a run of its own (locked, resumable: started again, finished seeds are not
retrained), and a finished seed whose .pt files were deleted, or that another process
trained, is read from its log's final record. This module owns `seed-N/` and seeds.json.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from minbert import distributed
from minbert.config import RunConfig
from minbert.evaluation import overall_score
from minbert.runs import (SPECIALIST, RunError, RunFolder, seed_runs, specialist_runs,
                          write_text_atomic)
from minbert.tasks import BUILTIN, build_task, build_tasks
from minbert.stats import mean_interval
from minbert.training import train

SUMMARY = "seeds.json"


def is_seeds_folder(folder) -> bool:
    """Whether `folder` holds a seeds summary or seed-N/ runs."""
    folder = Path(folder)
    return (folder / SUMMARY).is_file() or any(
        p.name.removeprefix("seed-").isdigit() for p in folder.glob("seed-*"))


def _finished_without_checkpoint(config: RunConfig) -> dict | None:
    """The dev scores of a finished run whose checkpoint.pt is gone (deleted to save space,
    or trained elsewhere and copied without it), read from its log's final record; None
    where train() decides (no such record, or a checkpoint to resume from)."""
    folder = RunFolder(config.run_dir)
    if folder.checkpoint.exists() or not folder.config_file.is_file():
        return None
    final = folder.final_record()
    if final is None or "dev" not in final:
        return None
    changes = folder.saved_config_changes(config)
    if changes:
        raise RunError(f"{folder.path} holds a finished run of a different config "
                       f"({', '.join(changes)}); use another run_dir, the same config, or "
                       "--overwrite to replace it")
    return final["dev"]


def _earlier_seeds(config: RunConfig, parent: Path, trained: set[int]) -> dict[int, dict]:
    """The dev scores of the finished seeds the folder holds besides `trained` (an earlier
    `--seeds 0,1,2` before this `--seeds 3,4`, say), those of the same config only."""
    found = {}
    for sub in seed_runs(parent):
        seed = int(sub.name.removeprefix("seed-"))
        if seed in trained:
            continue
        folder, same = RunFolder(sub), replace(config, run_dir=str(sub),
                                               train=replace(config.train, seed=seed))
        final = folder.final_record()
        if final is not None and "dev" in final and not folder.saved_config_changes(same):
            found[seed] = final["dev"]
    return found


def train_seeds(config: RunConfig, seeds: list[int], overwrite: bool = False) -> dict:
    """One run per seed under the run folder (seed-0/, seed-1/, ...), each an ordinary run
    (locked, resumable: started again, finished seeds are not retrained), then a summary
    in seeds.json of these and of the finished seeds of the same config the folder already
    holds: each task's and the overall mean, standard deviation and 95% interval of the
    mean across seeds."""
    if len(set(seeds)) != len(seeds) or not seeds or min(seeds) < 0:
        raise RunError(f"--seeds {seeds}: give distinct non-negative seeds, e.g. 0,1,2")
    parent = Path(config.run_dir)
    results = {}
    for seed in seeds:
        run = replace(config, run_dir=str(parent / f"seed-{seed}"),
                      train=replace(config.train, seed=seed))
        if distributed.launched_as_main():
            tqdm.write(f"seed {seed}: {run.run_dir}")
        finished = None if overwrite else _finished_without_checkpoint(run)
        results[seed] = finished if finished is not None else train(run, overwrite=overwrite)
    results.update(_earlier_seeds(config, parent, set(results)))
    results = dict(sorted(results.items()))
    metrics = [m for m in results.values() if "overall" in m]
    summary = {"seeds": list(results), "runs": {str(k): v for k, v in results.items()},
               "summary": {key: mean_interval([m[key] for m in metrics])
                           for key in (metrics[0] if metrics else {})}}
    if distributed.launched_as_main():
        # one seed has no spread: null in the file (NaN is not JSON)
        text = json.dumps(summary, indent=2).replace("NaN", "null")
        write_text_atomic(parent / SUMMARY, text + "\n")
    return summary


def seed_results(folder) -> dict[str, dict]:
    """Each seed's dev metrics in a `--seeds` folder: those of its seeds.json, and of any
    finished seed-N/ run it does not list (its log's final record)."""
    if specialist_runs(folder):
        return specialists_seed_results(folder)
    path = Path(folder) / SUMMARY
    runs = {}
    if path.is_file():
        try:
            runs = dict(json.loads(path.read_text(encoding="utf-8"))["runs"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{path}: not a seeds summary ({e})") from None
    for sub in sorted(Path(folder).glob("seed-*")):
        seed = sub.name.removeprefix("seed-")
        final = RunFolder(sub).final_record() if seed.isdigit() else None
        if seed not in runs and final is not None and "dev" in final:
            runs[seed] = final["dev"]
    return {seed: metrics for seed, metrics in runs.items() if "overall" in metrics}


def specialist_config(config: RunConfig, task: str) -> RunConfig:
    """The recipe for `task` alone, in RUN_DIR/specialist-TASK (no distillation: the
    specialists are what a student distils)."""
    smart = replace(config.smart, tasks=[t for t in config.smart.tasks if t == task])
    budget = config.tasks.get(task, {}).get("epochs")  # the task's own epochs, if any
    epochs = math.ceil(budget) if budget else config.train.specialist_epochs
    train = replace(config.train, epochs=epochs or config.train.epochs, distill_transfer={})
    return replace(config, run_dir=str(Path(config.run_dir) / f"{SPECIALIST}{task}"),
                   data=replace(config.data, tasks=[task]), smart=smart, train=train,
                   regularizers={k: v for k, v in config.regularizers.items()
                                 if k != "distill"})


def train_specialists(config: RunConfig, seeds: list[int] | None = None,
                      overwrite: bool = False) -> dict[str, dict]:
    """One run (or, with seeds, one seeds folder) per task; each task's dev metrics (the
    mean over seeds)."""
    results = {}
    for task in config.data.tasks:
        run = specialist_config(config, task)
        if distributed.launched_as_main():
            tqdm.write(f"specialist {task}: {run.run_dir}")
        if seeds:
            summary = train_seeds(run, seeds, overwrite)["summary"]
            results[task] = {k: v["mean"] for k, v in summary.items()}
        else:
            results[task] = train(run, overwrite=overwrite)
    return results


MULTITASK = "multitask"  # RUN/multitask/: the multi-task stage of `train --finetune`


def finetune_configs(config: RunConfig, epochs: int) -> tuple[RunConfig, RunConfig]:
    """MT-DNN's recipe (Liu et al. 2019) as two configs: the multi-task run, in
    RUN_DIR/multitask, and the recipe whose specialists (RUN_DIR/specialist-TASK) each
    start from it and fine-tune their task alone for `epochs` (per-task epochs and
    train.specialist_epochs budget the multi-task stage only)."""
    parent = Path(config.run_dir)
    multi = replace(config, run_dir=str(parent / MULTITASK))
    tasks = {name: {k: v for k, v in spec.items() if k != "epochs"}
             for name, spec in config.tasks.items()}
    tuned = replace(config, tasks=tasks, model=replace(config.model, init_from=multi.run_dir),
                    train=replace(config.train, epochs=epochs, specialist_epochs=0))
    return multi, tuned


STUDENT = "student"  # RUN/student/: the one model of `train --distill`


def student_config(config: RunConfig) -> RunConfig:
    """BAM's student (Clark et al. 2019) of the specialists `train --specialists` writes in
    RUN_DIR: the multi-task recipe in RUN_DIR/student, each task taught by its specialist
    (a --seeds folder: the ensemble of its seeds) with teacher annealing unless the
    config's [regularizers.distill] says otherwise (its other options are kept)."""
    parent = Path(config.run_dir)
    options = {"anneal": "linear", **config.regularizers.get("distill", {}),
               "teachers": {task: [str(parent / f"{SPECIALIST}{task}")]
                            for task in config.data.tasks}}
    tasks = dict(config.tasks)
    for task, spec in transfer_sets(config).items():  # each with its texts the teachers label
        own = dict(tasks.get(task, {}))
        entry = {"path": str(transfer_file(config, task).resolve()), "hold_out": False}
        if spec.get("subsample") is not None:
            entry["subsample"] = spec["subsample"]
        own["train_files"] = [*build_task(task, own).train_files, entry]
        tasks[task] = own
    return replace(config, run_dir=str(parent / STUDENT), tasks=tasks,
                   train=replace(config.train, distill_transfer={}),
                   regularizers={**config.regularizers, "distill": options})


TRANSFER = "transfer-"  # RUN/transfer-TASK.csv: texts labelled by TASK's specialists


def transfer_file(config: RunConfig, task: str) -> Path:
    return Path(config.run_dir) / f"{TRANSFER}{task}.csv"


def transfer_sets(config: RunConfig) -> dict[str, dict]:
    """train.distill_transfer, checked: each task of the student -> {texts_of, subsample}
    (the texts of a built-in task, or of one the config declares) or {texts, subsample}
    (a file of texts, as `minbert data label --texts` reads; relative to data.dir)."""
    sets = {}
    for task, spec in config.train.distill_transfer.items():
        where = f"train.distill_transfer.{task}"
        spec = {"texts_of": spec} if isinstance(spec, str) else spec
        if task not in config.data.tasks:
            raise ValueError(f"{where}: {task!r} is not one of data.tasks "
                             f"({', '.join(config.data.tasks)})")
        source = set(spec) & {"texts_of", "texts"} if isinstance(spec, dict) else set()
        if (len(source) != 1 or not isinstance(spec[source.pop()], str)
                or set(spec) - {"texts_of", "texts", "subsample"}):
            raise ValueError(f"{where}: a task name, {{texts_of = \"TASK\", subsample = N}} "
                             f"or {{texts = \"FILE\", subsample = N}}, got {spec!r}")
        if "texts" in spec:
            if not transfer_texts(config, spec).is_file():
                raise ValueError(f"{where}.texts = {spec['texts']!r}: no such file "
                                 f"({transfer_texts(config, spec)})")
            sets[task] = spec
            continue
        if spec["texts_of"] not in {*BUILTIN, *config.tasks}:
            raise ValueError(f"{where}.texts_of = {spec['texts_of']!r}: no such task (built "
                             f"in: {', '.join(BUILTIN)})")
        width = [len(build_task(name, config.tasks.get(name, {})).text_columns)
                 for name in (task, spec["texts_of"])]
        if width[0] != width[1]:
            raise ValueError(f"{where}.texts_of = {spec['texts_of']!r}: its examples have "
                             f"{width[1]} text(s), {task}'s have {width[0]}")
        sets[task] = spec
    return sets


def transfer_texts(config: RunConfig, spec: dict) -> Path:
    """A transfer set's own file of texts (`texts`), found as task files are: in data.dir
    unless the path is absolute."""
    return Path(config.data.dir) / spec["texts"]


def label_transfer_sets(config: RunConfig, overwrite: bool = False) -> None:
    """Writes each RUN/transfer-TASK.csv that is not there yet (or, with `overwrite`, the
    specialists retrained, again): the training texts of its source task (less the share
    a run holds out), or its file of texts, labelled by TASK's specialists."""
    from minbert.labelling import label, label_file
    progress = distributed.launched_as_main()  # one process speaks
    for task, spec in transfer_sets(config).items():
        out = transfer_file(config, task)
        if out.is_file() and not overwrite:  # labelled earlier (perhaps by fewer seeds)
            if progress:
                tqdm.write(f"{out}: labelled earlier, reused (delete it to have the "
                           "specialists there now label it again)")
            continue
        teachers = [Path(config.run_dir) / f"{SPECIALIST}{task}"]
        if "texts" in spec:
            source = transfer_texts(config, spec)
            rows, runs = label_file(teachers, task, source, out, config.data.eval_batch_size,
                                    progress=progress)
        else:
            source = spec["texts_of"]
            rows, runs = label(teachers, task,
                               build_task(source, config.tasks.get(source, {})),
                               config.data.dir, out, config.data.validation,
                               config.data.validation_seed, config.data.eval_batch_size,
                               progress=progress)
        if progress:
            tqdm.write(f"{out}: {rows:,} {source} examples labelled for {task} by its "
                       f"{runs} specialist run(s)")


def specialists_seed_results(folder) -> dict[str, dict]:
    """Each seed's dev metrics of a specialists folder: every task from its specialist, the
    overall score computed over them (what the specialists give together)."""
    specialists = specialist_runs(folder)
    per_task = {task: seed_results(path) for task, path in specialists.items()}
    common = set.intersection(*(set(r) for r in per_task.values())) if per_task else set()
    if not common:  # specialists of one run each (no seeds), or none finished
        return {}
    tasks = {}
    for path in specialists.values():
        tasks.update(build_tasks(RunFolder(seed_runs(path)[0]).read_config()))
    out = {}
    for seed in sorted(common, key=int):
        metrics = {task: per_task[task][seed][task] for task in per_task}
        out[seed] = {**metrics, "overall": overall_score(metrics, tasks)}
    return out
