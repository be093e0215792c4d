"""Run configuration: one dataclass per concern, filled from TOML, overridden by
`section.key=value` flags, validated once at start-up with errors that name the key.

A config file may start with `inherit = "other.toml"` (relative to itself) and then
change only what differs.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from minbert.regularizers.smart import SmartSettings

REPO_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class ConfigKeyError(ValueError):
    """A config key or value that is not accepted; the message names it."""


def default_data_dir() -> str:
    return os.environ.get("MINBERT_DATA", str(REPO_DATA))


@dataclass
class ModelConfig:
    checkpoint: str = "minilm-l6"     # local HF folder, 'minilm-l6' (offline) or a hub id
    pair_encoding: str = "cross"      # cross | bi
    pooling: str = "mean"             # mean | cls | pooler
    similarity_head: str = "cosine"   # bi-encoded regression: cosine | concat
    head_dropout: float = 0.1
    max_length: int = 128


@dataclass
class DataConfig:
    dir: str = field(default_factory=default_data_dir)
    tasks: list = field(default_factory=lambda: ["sst", "quora", "sts"])
    batch_size: int = 32
    eval_batch_size: int = 128
    dev_limit: int = 0                # evaluate on the first N dev examples of a task (0: all)


@dataclass
class TrainConfig:
    mode: str = "full-model"          # full-model | last-linear-layer
    epochs: int = 3
    lr: float = 5e-5
    head_lr: float = 0.0              # 0: same as lr
    weight_decay: float = 0.01
    warmup: float = 0.1               # fraction of all updates
    clip_norm: float = 1.0            # 0: no clipping
    sampler: str = "round-robin"      # sequential | round-robin | proportional | temperature
    temperature: float = 2.0
    combiner: str = "sum"             # sum | pcgrad | cagrad
    combiner_options: dict = field(default_factory=dict)  # e.g. {c = 0.4} for cagrad
    grad_accumulation: int = 1
    seed: int = 0
    checkpoint_every: int = 200       # optimizer steps between resumable checkpoints
    log_every: int = 20
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    precision: str = "fp32"           # fp32 | bf16 (autocast)
    max_steps: int = 0                # stop after N steps of the whole run (0: no limit)
    tensorboard: bool = False         # also write TensorBoard scalars to RUN_DIR/tensorboard
    compile: bool = False             # torch.compile the encoder
    compile_backend: str = "inductor"  # torch.compile backend (inductor needs a C++ compiler)


@dataclass
class SmartConfig(SmartSettings):
    """SMART (Jiang et al. 2020); the per-step settings are SmartSettings' (smart.py)."""
    enabled: bool = False
    teacher_momentum: float = 0.999   # β after the warm phase
    teacher_momentum_warm: float = 0.99
    teacher_warm_fraction: float = 0.1
    tasks: list = field(default_factory=list)  # [] = every task
    overrides: dict = field(default_factory=dict)  # per task: {sts = {adversarial_weight = 5}}


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    smart: SmartConfig = field(default_factory=SmartConfig)
    tasks: dict = field(default_factory=dict)  # per-task overrides or new tasks

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
             "smart": SmartConfig}
_CHOICES = {
    ("model", "pair_encoding"): ("cross", "bi"),
    ("model", "pooling"): ("mean", "cls", "pooler"),
    ("model", "similarity_head"): ("cosine", "concat"),
    ("train", "mode"): ("full-model", "last-linear-layer"),
    ("train", "sampler"): ("sequential", "round-robin", "proportional", "temperature"),
    ("train", "precision"): ("fp32", "bf16"),
    ("smart", "norm"): ("inf", "l2"),
    ("smart", "inner_divergence"): ("auto", "kl", "sym-kl", "squared"),
    ("smart", "final_divergence"): ("auto", "kl", "sym-kl", "squared"),
    ("smart", "proximal_divergence"): ("auto", "kl", "sym-kl", "squared"),
}
_POSITIVE = {("data", "batch_size"), ("data", "eval_batch_size"), ("train", "epochs"),
             ("train", "grad_accumulation"), ("model", "max_length"),
             ("train", "checkpoint_every"), ("train", "log_every")}


def _read_toml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigKeyError(f"{path}: no such config file")
    if path.resolve() in seen:
        raise ConfigKeyError(f"{path}: inherits from itself")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigKeyError(f"{path}: {e}") from None
    parent = values.pop("inherit", None)
    if parent is None:
        return values
    base = _read_toml(path.parent / parent, (*seen, path.resolve()))
    return _merge(base, values)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (_merge(base[key], value) if isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return merged


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=2e-5' -> (['train', 'lr'], 2e-5); the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigKeyError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def _check_type(where: str, value, default):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigKeyError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value


def build_config(values: dict, source: str = "config") -> RunConfig:
    config = RunConfig()
    for key, value in values.items():
        if key == "run_dir":
            config.run_dir = str(value)
        elif key == "tasks":
            if not isinstance(value, dict):
                raise ConfigKeyError(f"{source}: [tasks] must be a table of task tables")
            config.tasks = value
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigKeyError(f"{source}: [{key}] must be a table")
            section = getattr(config, key)
            known = {f.name for f in fields(section)}
            for name, item in value.items():
                if name not in known:
                    raise ConfigKeyError(f"{source}: unknown key {key}.{name}; [{key}] takes "
                                         f"{', '.join(sorted(known))}")
                item = _check_type(f"{source}: {key}.{name}", item, getattr(section, name))
                setattr(section, name, item)
        else:
            raise ConfigKeyError(f"{source}: unknown key {key!r}; the top level takes run_dir, "
                                 f"tasks, {', '.join(_SECTIONS)}")
    validate(config, source)
    return config


def validate(config: RunConfig, source: str = "config") -> None:
    for (section, name), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigKeyError(f"{source}: {section}.{name} = {value!r}; use one of "
                                 f"{', '.join(allowed)}")
    for section, name in _POSITIVE:
        if getattr(getattr(config, section), name) <= 0:
            raise ConfigKeyError(f"{source}: {section}.{name} must be positive")
    if not config.data.tasks:
        raise ConfigKeyError(f"{source}: data.tasks lists no task")
    if not 0 <= config.train.warmup < 1:
        raise ConfigKeyError(f"{source}: train.warmup is a fraction in [0, 1)")
    unknown = [t for t in config.smart.tasks if t not in config.data.tasks]
    if unknown:
        raise ConfigKeyError(f"{source}: smart.tasks names {unknown}, not in data.tasks")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    values = _read_toml(Path(path)) if path else {}
    for text in overrides:
        keys, value = parse_override(text)
        target = values
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigKeyError(f"override {text!r}: {key} is not a table")
        target[keys[-1]] = value
    return build_config(values, str(path) if path else "flags")
