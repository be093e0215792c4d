"""From a run config to the parts of a run, once: its tasks, sampler, gradient combiner,
regularisers and device (a `Plan`). The CLI builds the plan before any weights
load or data is read, so a bad value fails at once with the key named; the trainer takes
the plan and builds none of it again.

Every method is built from its registry with the config's options as constructor
arguments, so a method's own constructor checks them and a new method needs no change
here. Data are read and tokenised here too (`encode_train`, `encode_split`), once per run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from minbert.combiners import Combiner, make_combiner
from minbert.config import ConfigKeyError, RunConfig, build_config, load_config
from minbert.data import EncodedTask
from minbert.devices import resolve_device
from minbert.regularizers import REGULARIZERS, Regularizer
from minbert.samplers import Sampler, make_sampler
from minbert.tasks import BUILTIN, Task, build_tasks, read_split
from minbert.tokenizer import Tokenizer


@dataclass
class Plan:
    """What a run config names, built: the trainer's parts."""
    config: RunConfig
    tasks: dict[str, Task]
    sampler: Sampler
    combiner: Combiner
    regularizers: list[Regularizer]
    device: torch.device           # the precision is chosen on it with the model (devices.py)


def build_plan(config: RunConfig, source: str = "config") -> Plan:
    """The run's parts; errors name the key (`source` says which file or flags)."""
    tasks = _tasks(config, source)
    cfg = config.train
    _check_budgets(tasks, cfg.epochs, source)
    try:
        sampler = make_sampler(cfg.sampler, cfg.temperature)
        combiner = make_combiner(cfg.combiner, seed=cfg.seed, tasks=tasks,
                                 **cfg.combiner_options)
        regularizers = build_regularizers(config, tasks)
    except ValueError as e:
        raise ConfigKeyError(f"{source}: {e}") from None
    if cfg.compile:
        _check_compile_backend(cfg.compile_backend, source)
    return Plan(config, tasks, sampler, combiner, regularizers, resolve_device(cfg.device))


def _check_budgets(tasks: dict[str, Task], epochs: int, source: str) -> None:
    """Per-task epochs within the run's, and some task training in its last epoch."""
    budgets = {name: task.epochs for name, task in tasks.items() if task.epochs is not None}
    for name, budget in budgets.items():
        if budget > epochs:
            raise ConfigKeyError(f"{source}: tasks.{name}.epochs = {budget} is more than "
                                 f"train.epochs = {epochs}; raise train.epochs (the other "
                                 "tasks' epochs may be set lower)")
    if len(budgets) == len(tasks) and max(budgets.values()) <= epochs - 1:
        raise ConfigKeyError(f"{source}: every task stops before train.epochs = {epochs} "
                             f"(tasks.X.epochs at most {max(budgets.values())}); lower "
                             "train.epochs")


def _check_compile_backend(name: str, source: str) -> None:
    import torch._dynamo
    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise ConfigKeyError(f"{source}: train.compile_backend = {name!r}; use one of "
                             f"{', '.join(sorted(known))}")


def build_regularizers(config: RunConfig, tasks: dict[str, Task]) -> list[Regularizer]:
    """The regularisers a run switches on, in the order their terms are added."""
    context = {"tasks": tasks, "seed": config.train.seed}
    built = []
    if config.smart.enabled:
        built.append(REGULARIZERS.build("smart", {"settings": config.smart}, **context))
    for name, options in config.regularizers.items():
        built.append(REGULARIZERS.build(name, options, f"regularizers.{name}", **context))
    return built


def _tasks(config: RunConfig, source: str) -> dict[str, Task]:
    # a table for a task outside the run is a typo, unless it is a built-in task that an
    # inherited config set up and this run leaves out (data.tasks = ["sst"])
    names = config.data.tasks
    extra = sorted(set(config.tasks) - set(names) - set(BUILTIN))
    if extra:
        raise ConfigKeyError(f"{source}: [tasks.{extra[0]}] configures a task that is not in "
                             f"data.tasks {names}; add it there or remove the table")
    extra = sorted(set(config.smart.overrides) - set(names) - set(BUILTIN))
    if extra:
        raise ConfigKeyError(f"{source}: smart.overrides.{extra[0]}: no task {extra[0]!r} in "
                             f"data.tasks {names}")
    try:
        return build_tasks(config)
    except ValueError as e:
        raise ConfigKeyError(f"{source}: {e}") from None


def load_plan(path: str | Path | None, overrides: list[str] = ()) -> Plan:
    """The plan of a config file with `section.key=value` overrides applied."""
    return build_plan(load_config(path, overrides), str(path) if path else "flags")


def checked_config(values: dict, source: str = "config") -> RunConfig:
    """A config from raw values, checked as a run would check it (its methods built)."""
    config = build_config(values, source)
    build_plan(config, source)
    return config


# ---------------------------------------------------------------------- data, once a run
def encode_train(config: RunConfig, tasks: dict[str, Task], tokenizer: Tokenizer
                 ) -> tuple[dict[str, EncodedTask], dict[str, EncodedTask], dict[str, int]]:
    """Every task's training set and, with data.validation > 0, its held-out validation
    split, tokenised once; also how many training examples each file gave."""
    train_sets, validation_sets, counts = {}, {}, {}
    for name, task in tasks.items():
        examples, held_out, file_counts = task.read_train_and_validation(
            config.data.dir, config.train.seed, config.data.validation,
            config.data.validation_seed)
        counts.update(file_counts)
        encoding = task.encoding(config.model.pair_encoding)
        train_sets[name] = EncodedTask(name, examples, tokenizer, encoding)
        if held_out is not None:
            validation_sets[name] = EncodedTask(name, held_out, tokenizer, encoding)
    return train_sets, validation_sets, counts


def encode_split(config: RunConfig, tasks: dict[str, Task], tokenizer: Tokenizer,
                 split: str, labelled: bool = True) -> dict[str, EncodedTask]:
    """Reads and tokenises one split ('dev' or 'test') of every task that has that file."""
    out = {}
    for name, task in tasks.items():
        examples = read_split(config, task, split, labelled)
        if examples is not None:
            out[name] = EncodedTask(name, examples, tokenizer,
                                    task.encoding(config.model.pair_encoding))
    return out
