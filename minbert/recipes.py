"""What `minbert train` runs: one run, one run per seed, one specialist per task, the
specialists then one model distilled from them (BAM), or MT-DNN's multi-task model then
each task fine-tuned from it. Each checks every plan it will need before any training,
trains, and prints what the user reads at the end (on the main process only, under
torchrun)."""
from __future__ import annotations

from dataclasses import replace

from minbert.build import Plan, build_plan
from minbert.compare import compare_folders, format_differences
from minbert.config import RunConfig
from minbert.distributed import launched_as_main
from minbert.evaluation import format_table, overall_score
from minbert.pretrained import caveats
from minbert.regularizers.distill import Distill
from minbert.runs import RunError
from minbert.seeds import (finetune_configs, label_transfer_sets, seed_results,
                           specialist_config, student_config, train_seeds, train_specialists,
                           transfer_sets)
from minbert.training import train


def one(plan: Plan, overwrite: bool = False) -> int:
    """One run of a built plan, its dev metrics printed."""
    config = plan.config
    result = train(plan, overwrite=overwrite)
    if "overall" in result and launched_as_main():
        chosen = ("dev metrics of the epoch chosen on the held-out validation split"
                  if config.data.validation else "best dev metrics")
        print(f"\n{chosen} ({config.run_dir}/best.pt):")
        print(format_table(result, plan.tasks))
        for note in caveats(config.model.checkpoint, plan.tasks):
            print(f"note: {note}")
    return 0


def seeds(plan: Plan, seed_list: list[int], overwrite: bool = False) -> int:
    """A run per seed (RUN/seed-N), then their mean, spread and interval."""
    result = train_seeds(plan.config, seed_list, overwrite=overwrite)
    if launched_as_main():
        count = len(result["runs"])  # with the folder's earlier seeds of this config
        spread = count > 1  # one seed: no spread, no interval (not "± nan")
        print(f"\n{count} seed{'s' if spread else ''} ({plan.config.run_dir}/seeds.json): "
              + ("mean, standard deviation and 95% interval of the mean" if spread else
                 "its dev scores (more seeds give a spread and an interval)"))
        for key, s in result["summary"].items():
            metric = plan.tasks[key].metric_name if key in plan.tasks else ""
            print(f"{key:<10}{metric:<10}{s['mean']:>8.4f}" + (
                f" ± {s['std']:.4f}   [{s['low']:.4f}, {s['high']:.4f}]" if spread else ""))
    return 0


def specialists(plan: Plan, seed_list: list[int] | None, overwrite: bool = False,
                what: str = "the specialists together") -> int:
    """A run (or seeds) per task, that task alone (RUN/specialist-TASK)."""
    for task in plan.tasks:  # each specialist's recipe checked before any training
        build_plan(specialist_config(plan.config, task), f"--specialists ({task})")
    results = train_specialists(plan.config, seed_list, overwrite=overwrite)
    if launched_as_main():
        metrics = {task: result[task] for task, result in results.items() if task in result}
        metrics["overall"] = overall_score(metrics, plan.tasks)
        print(f"\n{what} ({plan.config.run_dir}/specialist-*"
              f"{', mean over seeds' if seed_list else ''}):")
        print(format_table(metrics, plan.tasks))
    return 0


def finetuned(plan: Plan, epochs: int, seed_list: list[int] | None,
              overwrite: bool = False) -> int:
    """MT-DNN: the multi-task model in RUN/multitask, then each task fine-tuned alone from
    it for `epochs` in RUN/specialist-TASK (one model per task: compare RUN with
    RUN/multitask)."""
    multi, tuned = finetune_configs(plan.config, epochs)
    tuned_plan = build_plan(tuned, f"--finetune {epochs}")
    for task in tuned_plan.tasks:
        build_plan(specialist_config(tuned, task), f"--finetune ({task})")
    if launched_as_main():
        print(f"the multi-task stage: {multi.run_dir}")
    if seed_list is not None:
        seeds(build_plan(multi), seed_list, overwrite)
    else:
        one(build_plan(multi), overwrite)
    return specialists(tuned_plan, seed_list, overwrite,
                       f"each task fine-tuned from {multi.run_dir}")


def distilled(config: RunConfig, seed_list: list[int] | None, overwrite: bool = False,
              source: str = "config") -> int:
    """BAM: the specialists in RUN/specialist-TASK, then one multi-task model taught by
    them in RUN/student (compare RUN/student with RUN). The config's own
    [regularizers.distill] options (weight, divergence, anneal) are the student's; its
    teachers are the specialists, who also label train.distill_transfer's texts for it
    (RUN/transfer-TASK.csv)."""
    if "teachers" in config.regularizers.get("distill", {}):
        raise ValueError(f"{source}: regularizers.distill.teachers is set; --distill "
                         "teaches each task by its specialist: remove the key, or train "
                         "without --distill")
    try:
        transfer_sets(config)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    base = replace(config, regularizers={k: v for k, v in config.regularizers.items()
                                         if k != "distill"})
    plan = build_plan(base, source)
    student = student_config(config)
    # the student's methods checked before any training, its teachers not yet there
    build_plan(replace(student, regularizers=base.regularizers), f"{source} (the student)")
    options = {k: v for k, v in student.regularizers["distill"].items() if k != "teachers"}
    try:
        Distill.check_options(**options)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    specialists(plan, seed_list, overwrite)
    label_transfer_sets(config, overwrite)  # train.distill_transfer: texts the specialists label
    student_plan = build_plan(student, f"{source} (the student)")  # the teachers exist now
    if launched_as_main():
        print(f"\nthe student: {student.run_dir}")
    if seed_list is not None:
        seeds(student_plan, seed_list, overwrite)
    else:
        one(student_plan, overwrite)
    if launched_as_main():
        print(against_specialists(student.run_dir, config.run_dir, seed_list))
    return 0


def against_specialists(student: str, folder: str, seed_list: list[int] | None) -> str:
    """What --distill prints last: the student against its specialists, task by task (as
    `minbert compare` prints it), and the commands that make one model of its seeds and an
    ensemble with its teachers."""
    try:
        rows, how = compare_folders(student, folder)
        table = format_differences(rows, student, f"{folder}/specialist-*", how)
    except (RunError, ValueError) as e:  # the runs are trained and kept: say why, go on
        table = f"(not compared: {e})"
    text = f"\nthe student against its specialists (minbert compare {student} {folder}):\n" \
           + table
    if seed_list is not None and len(seed_results(student)) > 1:  # earlier seeds count too
        text += ("\n\none model, the mean weights of the student's seeds:\n"
                 f"  minbert evaluate {student} --average --out {folder}/student-soup\n"
                 "the ensemble of the student's seeds and their teachers:\n"
                 f"  minbert evaluate {student} {folder} --out {folder}/ensemble")
    return text
