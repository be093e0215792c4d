"""Run configuration as data: one dataclass per concern, filled from TOML, overridden by
`section.key=value` flags, its types, ranges and choices checked when loaded, with errors
that name the key and what it accepts.

A config file may start with `inherit = "other.toml"` (relative to itself) and then
change only what differs. This module is the schema and the home of the project's
vocabularies (encodings, poolings, divergences, precisions); it imports nothing from the
rest of the package. Values that name a method (combiner, sampler, regulariser, task
kind) are checked by building them, once, in minbert/build.py.
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

REPO_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# How a pair becomes segments: one cross-encoded sequence, each sentence alone, or both;
# a single sentence is "single". Value: segments per example.
ENCODINGS = {"single": 1, "cross": 1, "bi": 2, "both": 3}
PAIR_ENCODINGS = ("cross", "bi", "both")
# How a segment's token states become one vector: their mean over real tokens, the [CLS]
# state, or BERT's pooler (a dense layer and tanh on [CLS]).
POOLINGS = ("mean", "cls", "pooler")
SIMILARITY_HEADS = ("cosine", "concat")   # a bi-encoded score: cosine, or a layer on [u; v; ...]
DIVERGENCES = ("kl", "sym-kl", "squared")  # between two outputs of a task (SMART, distill)
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigKeyError(ValueError):
    """A config key or value that is not accepted; the message names it."""


def default_data_dir() -> str:
    return os.environ.get("MINBERT_DATA", str(REPO_DATA))


@dataclass
class ModelConfig:
    checkpoint: str = "minilm-l6"     # local HF folder, 'minilm-l6' (offline) or a hub id
    pair_encoding: str = "cross"      # cross | bi | both
    pooling: str = "mean"             # mean | cls | pooler
    similarity_head: str = "cosine"   # bi-encoded regression: cosine | concat
    head_dropout: float = 0.1
    max_length: int = 128
    init_from: str = ""               # a finished run: start from its best weights (encoder,
                                      # and the heads of the tasks it shares); a --seeds
                                      # folder: its seed-N run for train.seed = N


@dataclass
class DataConfig:
    dir: str = field(default_factory=default_data_dir)
    tasks: list = field(default_factory=lambda: ["sst", "quora", "sts"])
    batch_size: int = 32
    eval_batch_size: int = 64        # sorted by length; measured fastest of 64-256 (benchmarks)
    dev_limit: int = 0                # evaluate on the first N dev examples of a task (0: all)
    validation: float = 0.0           # hold out this share of each training file to choose
    validation_seed: int = 0          # the epoch on (0: choose on dev); the split's seed


@dataclass
class TrainConfig:
    mode: str = "full-model"          # full-model | last-linear-layer
    epochs: int = 3
    specialist_epochs: int = 0        # --specialists/--distill: each specialist's epochs
                                      # (0: train.epochs; a task's own tasks.X.epochs wins)
    distill_transfer: dict = field(default_factory=dict)  # --distill: {sts = "quora"} or
                                      # {sts = {texts_of = "quora", subsample = N}}: quora's
                                      # training texts, labelled by sts's specialists, join
                                      # the student's sts data (seeds.py); or
                                      # {sst = {texts = "FILE"}}: a file's texts
    lr: float = 5e-5
    head_lr: float = 0.0              # 0: same as lr
    weight_decay: float = 0.01
    layer_decay: float = 1.0          # encoder layer i's lr: lr * layer_decay^(top - i); 1: off
    average_last: int = 0             # N >= 2: the mean weights of the last N epochs are one
                                      # more candidate for best.pt (0: off)
    keep_finished: bool = False       # a task past its tasks.X.epochs keeps its predictions:
                                      # what it reads (shared encoder, own layers, head) is
                                      # frozen while the other tasks train on
    warmup: float = 0.1               # fraction of all updates
    clip_norm: float = 1.0            # 0: no clipping
    sampler: str = "round-robin"      # a name in minbert.samplers.SAMPLERS
    temperature: float = 2.0
    combiner: str = "sum"             # a name in minbert.combiners.COMBINERS
    combiner_options: dict = field(default_factory=dict)  # e.g. {c = 0.4} for cagrad
    grad_accumulation: int = 1
    seed: int = 0
    checkpoint_every: int = 200       # optimizer steps between resumable checkpoints
    log_every: int = 20
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    precision: str = "auto"           # auto (bf16 where the hardware has it) | fp32 | bf16
    max_steps: int = 0                # stop after N steps of the whole run (0: no limit)
    tensorboard: bool = False         # also write TensorBoard scalars to RUN_DIR/tensorboard
    compile: bool = False             # torch.compile the encoder
    compile_backend: str = "inductor"  # torch.compile backend (inductor needs a C++ compiler)


@dataclass
class SmartConfig:
    """SMART (Jiang et al. 2020). The per-step settings (λs to detach_target) may be
    changed per task in `overrides`; the teacher and task list are the run's."""
    enabled: bool = False
    adversarial_weight: float = 1.0  # λs
    proximal_weight: float = 1.0     # μ
    noise_std: float = 1e-5          # σ
    step_size: float = 1e-3          # η
    epsilon: float = 1e-5            # ε
    adversarial_steps: int = 1       # K
    norm: str = "inf"                # inf | l2
    inner_divergence: str = "auto"   # auto: the task's own (sym-kl classes, squared scores)
    final_divergence: str = "auto"
    proximal_divergence: str = "auto"
    adversarial_dropout: bool = True
    adversarial_share: float = 1.0   # the term on this seeded share of each batch (unbiased)
    adversarial_every: int = 1       # the term on every k-th batch of a task (weight λs then)
    detach_target: bool = True       # f(x) in the final term as a constant (as VAT does)
    teacher_momentum: float = 0.999   # β after the warm phase
    teacher_momentum_warm: float = 0.99
    teacher_warm_fraction: float = 0.1
    tasks: list = field(default_factory=list)  # [] = every task
    overrides: dict = field(default_factory=dict)  # per task: {sts = {adversarial_weight = 5}}

    def divergence(self, which: str, task) -> str:
        """The divergence kind of one SMART term ('inner', 'final', 'proximal') for `task`."""
        kind = getattr(self, f"{which}_divergence")
        return task.smart_divergence if kind == "auto" else kind

    def for_task(self, task: str) -> "SmartConfig":
        """These settings with `task`'s overrides applied."""
        return replace(self, **self.overrides.get(task, {}))


@dataclass
class PretrainConfig:
    """`minbert pretrain`: continued masked-language-model training of the encoder on the
    configured tasks' own sentences (and/or any text files), written as an HF folder that
    model.checkpoint accepts."""
    run_dir: str = "runs/pretrain"   # its run folder; the model lands in RUN_DIR/model
    checkpoint: str = ""             # the BERT to start from ("": model.checkpoint)
    task_splits: list = field(default_factory=lambda: ["train", "dev", "test"])  # texts only
    text_files: list = field(default_factory=list)  # one text a line (relative to data.dir)
    epochs: int = 1
    max_steps: int = 0               # stop after N steps (0: no limit); resumable
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.06
    batch_size: int = 32
    max_length: int = 128
    mask_prob: float = 0.15          # of the real tokens; of those 80% [MASK], 10% random, 10% kept
    held_out: float = 0.02           # this share of the texts scores the MLM after each epoch
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    device: str = "auto"
    precision: str = "auto"


# the SMART settings a task may override (the rest are the run's)
SMART_PER_TASK = ("adversarial_weight", "proximal_weight", "noise_std", "step_size", "epsilon",
                  "adversarial_steps", "norm", "inner_divergence", "final_divergence",
                  "proximal_divergence", "adversarial_dropout", "adversarial_share",
                  "adversarial_every", "detach_target")


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    smart: SmartConfig = field(default_factory=SmartConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tasks: dict = field(default_factory=dict)  # per-task overrides or new tasks
    regularizers: dict = field(default_factory=dict)  # name -> its options (SMART: [smart])
    tune: dict = field(default_factory=dict)  # `minbert tune`'s study (minbert/tuning.py)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
             "smart": SmartConfig, "pretrain": PretrainConfig}
_SMART_DIVERGENCES = ("auto", *DIVERGENCES)
_CHOICES = {
    "model.pair_encoding": PAIR_ENCODINGS,
    "model.pooling": POOLINGS,
    "model.similarity_head": SIMILARITY_HEADS,
    "train.mode": ("full-model", "last-linear-layer"),
    "train.precision": PRECISIONS,
    "pretrain.precision": PRECISIONS,
    "smart.norm": ("inf", "l2"),
    "smart.inner_divergence": _SMART_DIVERGENCES,
    "smart.final_divergence": _SMART_DIVERGENCES,
    "smart.proximal_divergence": _SMART_DIVERGENCES,
}
# numeric ranges: (lowest, highest, lowest allowed?, highest allowed?); None: unbounded
MAX_SEED = 2 ** 32 - 1  # numpy's generators take seeds below 2^32 as one 32-bit word
_RANGES = {
    "model.head_dropout": (0, 1, True, False),
    "model.max_length": (8, None, True, None),  # [CLS] a [SEP] b [SEP] needs room for words
    "data.batch_size": (1, None, True, None),
    "data.eval_batch_size": (1, None, True, None),
    "data.dev_limit": (0, None, True, None),
    "data.validation": (0, 0.5, True, True),
    "data.validation_seed": (0, MAX_SEED, True, True),
    "train.epochs": (1, None, True, None),
    "train.specialist_epochs": (0, None, True, None),
    "train.lr": (0, None, False, None),
    "train.head_lr": (0, None, True, None),
    "train.weight_decay": (0, None, True, None),
    "train.layer_decay": (0, 1, False, True),
    "train.average_last": (0, None, True, None),
    "train.warmup": (0, 1, True, False),
    "train.clip_norm": (0, None, True, None),
    "train.temperature": (0, None, False, None),
    "train.grad_accumulation": (1, None, True, None),
    "train.seed": (0, MAX_SEED, True, True),
    "train.checkpoint_every": (1, None, True, None),
    "train.log_every": (1, None, True, None),
    "train.max_steps": (0, None, True, None),
    "pretrain.epochs": (1, None, True, None),
    "pretrain.max_steps": (0, None, True, None),
    "pretrain.lr": (0, None, False, None),
    "pretrain.weight_decay": (0, None, True, None),
    "pretrain.warmup": (0, 1, True, False),
    "pretrain.batch_size": (1, None, True, None),
    "pretrain.max_length": (8, None, True, None),
    "pretrain.mask_prob": (0, 1, False, False),
    "pretrain.held_out": (0, 0.5, True, True),
    "pretrain.seed": (0, MAX_SEED, True, True),
    "pretrain.checkpoint_every": (1, None, True, None),
    "pretrain.log_every": (1, None, True, None),
    "smart.adversarial_weight": (0, None, True, None),
    "smart.proximal_weight": (0, None, True, None),
    "smart.noise_std": (0, None, True, None),
    "smart.step_size": (0, None, False, None),
    "smart.epsilon": (0, None, False, None),
    "smart.adversarial_steps": (0, None, True, None),
    "smart.adversarial_share": (0, 1, False, True),
    "smart.adversarial_every": (1, None, True, None),
    "smart.teacher_momentum": (0, 1, True, True),
    "smart.teacher_momentum_warm": (0, 1, True, True),
    "smart.teacher_warm_fraction": (0, 1, True, True),
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _read_toml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigKeyError(f"{path}: no such config file")
    if path.resolve() in seen:
        raise ConfigKeyError(f"{path}: inherits from itself")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigKeyError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigKeyError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    parent = values.pop("inherit", None)
    if parent is None:
        return values
    if not isinstance(parent, str) or not parent:
        raise ConfigKeyError(f"{path}: inherit = {parent!r}; give the file name of another "
                             "config, e.g. inherit = \"cross-encoding.toml\"")
    base = _read_toml(path.parent / parent, (*seen, path.resolve()))
    return _merge(base, values)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (_merge(base[key], value) if isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return merged


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=2e-5' -> (['train', 'lr'], 2e-5); the value is read as TOML, else a string
    (so `train.sampler=proportional` needs no shell quoting); a list of bare words,
    `data.tasks=[sst,sts]`, is a list of strings."""
    if "=" not in text:
        raise ConfigKeyError(f"override {text!r}: expected section.key=value")
    key, raw = _split_key(text)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        words = _BARE_LIST.fullmatch(raw.strip())
        value = [w.strip() for w in words.group(1).split(",") if w.strip()] if words else raw
    return [a or b for a, b in _KEY_PART.findall(key.strip())], value


# [sst, sts]: words of letters, digits, '_', '-' and '.', separated by commas
_BARE_LIST = re.compile(r"\[((?:\s*[\w.-]+\s*,)*\s*[\w.-]*\s*)\]")


# a dotted key's parts; a part in double quotes may hold dots: tune.space."train.lr"
_KEY_PART = re.compile(r'"([^"]+)"|([^."]+)')


def _split_key(text: str) -> tuple[str, str]:
    """'a."b=c".d=1' -> ('a."b=c".d', '1'): the first '=' outside double quotes."""
    quoted = False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == "=" and not quoted:
            return text[:i], text[i + 1:]
    raise ConfigKeyError(f"override {text!r}: expected section.key=value")


def check_type(where: str, value, default):
    """`value` if it has the type of `default` (an int is a float too), else an error
    naming `where`."""
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
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigKeyError(f"{where}: {value!r} is not a finite number")
    return value


def _check_range(where: str, value, bounds) -> None:
    low, high, low_ok, high_ok = bounds
    fits = ((low is None or value > low or (low_ok and value == low))
            and (high is None or value < high or (high_ok and value == high)))
    if fits:
        return
    if high is not None:
        text = f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
    elif (low, low_ok) in ((0, False), (1, True)):
        text = "positive"
    else:
        text = f"{'≥' if low_ok else '>'} {low}"
    raise ConfigKeyError(f"{where} must be {text}, got {value!r}")


def _shown(key) -> str:
    """A key as a message shows it: at most 60 characters."""
    text = str(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _fill(section, values: dict, name: str, source: str, allowed=None) -> None:
    """Sets `values` on the dataclass `section`, each checked for name, type and range."""
    known = allowed or [f.name for f in fields(section)]
    if not isinstance(values, dict):
        raise ConfigKeyError(f"{source}: [{name}] must be a table")
    for key, value in values.items():
        if key not in known:
            raise ConfigKeyError(f"{source}: unknown key {name}.{_shown(key)}; [{name}] takes "
                                 f"{', '.join(sorted(known))}")
        setattr(section, key, check_type(f"{source}: {name}.{key}", value,
                                          getattr(section, key)))


def build_config(values: dict, source: str = "config") -> RunConfig:
    config = RunConfig()
    for key, value in values.items():
        if key == "run_dir":
            if not isinstance(value, str) or not value:
                raise ConfigKeyError(f"{source}: run_dir must be a folder path, got {value!r}")
            config.run_dir = value
        elif key in ("tasks", "regularizers"):
            if not isinstance(value, dict) or not all(isinstance(v, dict)
                                                      for v in value.values()):
                raise ConfigKeyError(f"{source}: [{key}] must be a table of tables, e.g. "
                                     f"[{key}.{'sst' if key == 'tasks' else 'name'}]")
            setattr(config, key, value)
        elif key == "tune":
            if not isinstance(value, dict):
                raise ConfigKeyError(f"{source}: [tune] must be a table")
            config.tune = value
        elif key in _SECTIONS:
            _fill(getattr(config, key), value, key, source)
        else:
            raise ConfigKeyError(f"{source}: unknown key {_shown(key)!r}; the top level takes run_dir, "
                                 f"tasks, regularizers, tune, {', '.join(_SECTIONS)}")
    validate(config, source)
    return config


def _check_values(section, kind: str, source: str, where: str | None = None) -> None:
    """Choices and ranges of one section's values; `kind` is the section they follow
    ('smart' for a task's SMART overrides), `where` how the message names them."""
    for key in (f.name for f in fields(section)):
        value, rule, name = getattr(section, key), f"{kind}.{key}", f"{where or kind}.{key}"
        if rule in _CHOICES and value not in _CHOICES[rule]:
            raise ConfigKeyError(f"{source}: {name} = {value!r}; use one of "
                                 f"{', '.join(_CHOICES[rule])}")
        if rule in _RANGES:
            _check_range(f"{source}: {name}", value, _RANGES[rule])


def validate(config: RunConfig, source: str = "config") -> None:
    """Every value's type, range and choice, checked before anything heavy runs; errors
    name the key. What names a method or a task is checked when the run is built."""
    for name in _SECTIONS:
        _check_values(getattr(config, name), name, source)
    for key in ("train.device", "pretrain.device"):
        section, name = key.split(".")
        if not _DEVICE.fullmatch(getattr(getattr(config, section), name)):
            raise ConfigKeyError(f"{source}: {key} = {getattr(getattr(config, section), name)!r}; "
                                 "use auto, cpu, cuda or cuda:N")
    if config.train.average_last == 1 or config.train.average_last > config.train.epochs:
        raise ConfigKeyError(f"{source}: train.average_last = {config.train.average_last}; "
                             f"average 2 to train.epochs ({config.train.epochs}) epochs, or 0")
    pre = config.pretrain
    unknown = [s for s in pre.task_splits if s not in ("train", "dev", "test")]
    if unknown or len(set(pre.task_splits)) != len(pre.task_splits):
        raise ConfigKeyError(f"{source}: pretrain.task_splits = {pre.task_splits!r}; list some "
                             "of train, dev, test (each once), or [] for text_files only")
    if not all(isinstance(f, str) and f for f in pre.text_files):
        raise ConfigKeyError(f"{source}: pretrain.text_files must list file paths, got "
                             f"{pre.text_files!r}")
    names = config.data.tasks
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ConfigKeyError(f"{source}: data.tasks must list task names, got {names!r}")
    if len(set(names)) != len(names):
        raise ConfigKeyError(f"{source}: data.tasks lists a task twice: {names}")
    if "smart" in config.regularizers:
        raise ConfigKeyError(f"{source}: SMART is configured in [smart] (enabled = true), "
                             "not in [regularizers.smart]")
    _check_smart(config, source)


def _check_smart(config: RunConfig, source: str) -> None:
    smart = config.smart
    unknown = [t for t in smart.tasks if t not in config.data.tasks]
    if unknown:
        raise ConfigKeyError(f"{source}: smart.tasks names {unknown}, not in data.tasks "
                             f"{config.data.tasks}")
    for task, changes in smart.overrides.items():
        per_task = replace(smart)
        _fill(per_task, changes, f"smart.overrides.{task}", source, SMART_PER_TASK)
        _check_values(per_task, "smart", source, f"smart.overrides.{task}")


def flatten(values: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-5}} -> {"train.lr": 1e-5}; a [tasks] table stays one value."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "tasks":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_value(values: dict, keys: list[str], value, where: str) -> None:
    """values[k1][k2]...[kn] = value, making the tables on the way."""
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigKeyError(f"{where}: {key} is not a table")
    target[keys[-1]] = value


def read_values(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """The raw values of a config file (its inherited files merged) with the flags applied."""
    values = _read_toml(Path(path)) if path else {}
    for text in overrides:
        keys, value = parse_override(text)
        set_value(values, keys, value, f"override {text!r}")
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return build_config(read_values(path, overrides), str(path) if path else "flags")
