"""A study's settings (`[tune]`) and search space (`[tune.space]`), each entry checked on
the config it searches: a value a trial could not train with is refused before any trial.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields

from minbert.build import checked_config
from minbert.config import ConfigKeyError, RunConfig, check_type, read_values, set_value

SPACE_KINDS = ("uniform", "log_uniform", "int", "log_int", "choices")
# keys a trial may not change: where it is written, and the split that judges it
FIXED = ("run_dir", "tune", "data.validation", "data.validation_seed")
OPTUNA_SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "hyperband", "threshold", "none")


class TuneError(RuntimeError):
    pass


@dataclass
class TuneConfig:
    trials: int = 20                  # finished (complete or pruned) trials the study holds
    space: dict = field(default_factory=dict)   # "section.key" -> {log_uniform = [a, b]}, ...
    sampler: str = "tpe"              # tpe | random
    sampler_options: dict = field(default_factory=dict)   # e.g. {n_startup_trials = 4}
    pruner: str = "median"            # median | percentile | hyperband | threshold | none
    pruner_options: dict = field(default_factory=dict)    # e.g. {n_warmup_steps = 1}
    storage: str = ""                 # an Optuna storage URL; "": SQLite in the study folder
    study_name: str = ""              # "": the study folder's name
    seed: int = 0                     # the sampler's seed (worker i adds 1000 i)
    jobs: int = 1                     # parallel trials on this machine
    score_dev: bool = False           # also score the dev files after each trial (not used)
    start_with_base: bool = False     # trial 0: the base config's own values of the space
    max_failures: int = 3             # failed trials in a row before a worker gives up


@dataclass(frozen=True)
class Dimension:
    """One entry of the search space."""
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple = ()

    def contains(self, value) -> bool:
        if self.kind == "choices":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        inside = self.low <= value <= self.high
        if self.step is not None:
            inside = inside and math.isclose((value - self.low) / self.step,
                                             round((value - self.low) / self.step))
        return inside and (self.kind not in ("int", "log_int") or isinstance(value, int))

    def values_to_check(self) -> tuple:
        return self.choices if self.kind == "choices" else (self.low, self.high)

    def distribution(self):
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)
        if self.kind == "choices":
            return CategoricalDistribution(self.choices)
        if self.kind in ("int", "log_int"):
            return IntDistribution(self.low, self.high, log=self.kind == "log_int",
                                   step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.kind == "log_uniform",
                                 step=self.step)


def _dimension(key, entry, where: str) -> Dimension:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigKeyError(f"{where}: a search-space key is a config key such as "
                             f"\"train.lr\", got {key!r}")
    if any(key == fixed or key.startswith(fixed + ".") for fixed in FIXED):
        raise ConfigKeyError(f"{where}: {key} cannot be searched: a trial's folder and the "
                             "validation split that judges it are the study's")
    example = 'e.g. {log_uniform = [1e-5, 3e-4]} or {choices = ["sum", "pcgrad"]}'
    if not isinstance(entry, dict):
        raise ConfigKeyError(f"{where}: give a table, {example}; got {entry!r}")
    kinds = [k for k in entry if k in SPACE_KINDS]
    unknown = [k for k in entry if k not in SPACE_KINDS and k != "step"]
    if len(kinds) != 1 or unknown:
        raise ConfigKeyError(f"{where}: give exactly one of {', '.join(SPACE_KINDS)} (and "
                             f"step for uniform or int), {example}; got {entry!r}")
    kind = kinds[0]
    value = entry[kind]
    if kind == "choices":
        if "step" in entry:
            raise ConfigKeyError(f"{where}: step goes with uniform or int, not choices")
        if (not isinstance(value, list) or not value or len(set(map(repr, value))) != len(value)
                or not all(isinstance(v, (bool, int, float, str)) for v in value)):
            raise ConfigKeyError(f"{where}: choices must be a list of distinct numbers, "
                                 f"strings or booleans, got {value!r}")
        return Dimension(key, kind, choices=tuple(value))
    integer = kind in ("int", "log_int")
    number = (int,) if integer else (int, float)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in value)
            or not all(math.isfinite(v) for v in value) or not value[0] < value[1]):
        raise ConfigKeyError(f"{where}: {kind} takes [low, high] with low < high"
                             f"{' (integers)' if integer else ''}, got {value!r}")
    low, high = value if integer else map(float, value)
    if kind.startswith("log") and low <= 0:
        raise ConfigKeyError(f"{where}: {kind} needs low > 0, got {low!r}")
    step = entry.get("step")
    if step is not None:
        if kind.startswith("log"):
            raise ConfigKeyError(f"{where}: step does not go with {kind}")
        step = check_type(f"{where}: step", step, 1 if integer else 1.0)
        if step <= 0 or step > high - low:
            raise ConfigKeyError(f"{where}: step must be in (0, high - low], got {step!r}")
    return Dimension(key, kind, low, high, step)


def parse_tune(values: dict, source: str = "config") -> tuple[TuneConfig, list[Dimension]]:
    """The [tune] table of a config's raw values, each search-space entry checked by
    building the config with its ends (or each choice): refused here, before a trial."""
    table = values.get("tune", {})
    tune = TuneConfig()
    if not isinstance(table, dict):
        raise ConfigKeyError(f"{source}: [tune] must be a table")
    names = [f.name for f in fields(TuneConfig)]
    for key, value in table.items():
        if key not in names:
            raise ConfigKeyError(f"{source}: unknown key tune.{key}; [tune] takes "
                                 f"{', '.join(sorted(names))}")
        setattr(tune, key, check_type(f"{source}: tune.{key}", value, getattr(tune, key)))
    for key, allowed in (("sampler", OPTUNA_SAMPLERS), ("pruner", PRUNERS)):
        if getattr(tune, key) not in allowed:
            raise ConfigKeyError(f"{source}: tune.{key} = {getattr(tune, key)!r}; use one of "
                                 f"{', '.join(allowed)}")
    for key in ("trials", "jobs", "max_failures"):
        if getattr(tune, key) < 1:
            raise ConfigKeyError(f"{source}: tune.{key} must be positive, got "
                                 f"{getattr(tune, key)!r}")
    base = {k: v for k, v in values.items() if k != "tune"}
    dimensions = []
    for key, entry in tune.space.items():
        dimension = _dimension(key, entry, f"{source}: tune.space.\"{key}\"")
        for value in dimension.values_to_check():
            try:
                trial_values(base, {key: value}, "check", source="check")
            except ConfigKeyError as e:
                raise ConfigKeyError(f"{source}: tune.space.\"{key}\" = {entry}: the value "
                                     f"{value!r} is refused: "
                                     f"{str(e).removeprefix('check: ')}") from None
        dimensions.append(dimension)
    if tune.start_with_base:
        base_params(base, dimensions, source)
    return tune, dimensions


def check_study(values: dict, source: str = "config"
                ) -> tuple[RunConfig, TuneConfig, list[Dimension]]:
    """A study config's raw values, checked: the run's settings as a run would check them,
    then [tune] with its space checked on them."""
    config = checked_config({k: v for k, v in values.items() if k != "tune"}, source)
    return (config, *parse_tune(values, source))


def load_study_config(path, overrides: list[str] = ()
                      ) -> tuple[RunConfig, TuneConfig, list[Dimension]]:
    """check_study of a config file with `section.key=value` overrides."""
    return check_study(read_values(path, overrides), str(path))


def base_params(base: dict, dimensions: list[Dimension], source: str = "config") -> dict:
    """The base config's value of each searched key (a section's default where the config
    sets none), each checked to lie in the space: tune.start_with_base runs them first."""
    config = checked_config({**base, "run_dir": "check"}, source).to_dict()
    params = {}
    for dimension in dimensions:
        value = config
        for part in dimension.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not dimension.contains(value):
            raise ConfigKeyError(f"{source}: tune.start_with_base: the base value of "
                                 f"{dimension.key}, {value!r}, is outside tune.space."
                                 f"\"{dimension.key}\"; widen the space, or set the value in the "
                                 "config")
        params[dimension.key] = value
    return params


def trial_values(base: dict, params: dict, run_dir: str, source: str = "trial",
                 check: bool = True) -> dict:
    """The raw config of one trial: the base with the trial's parameters set (and, with
    `check`, built as a run would build it)."""
    values = copy.deepcopy(base)
    values.pop("tune", None)
    for key, value in params.items():
        set_value(values, key.split("."), value, f"tune.space.\"{key}\"")
    values["run_dir"] = str(run_dir)
    if check:
        checked_config(values, source)
    return values
