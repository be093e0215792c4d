"""A model from a config, from a finished run folder or from an export: what prediction,
distillation teachers and `minbert export` load. Reading a run's config here builds its
tasks and model only, never its methods."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from minbert.config import RunConfig, build_config
from minbert.model import BertModel
from minbert.multitask import OWN_LAYERS, MultiTaskModel
from minbert.runs import RunError, RunFolder, first_line, load_state
from minbert.tasks import Task, build_tasks
from minbert.tokenizer import Tokenizer


def build_model(config: RunConfig, tasks: dict[str, Task]) -> tuple[MultiTaskModel, Tokenizer]:
    encoder = BertModel.from_pretrained(config.model.checkpoint)
    max_length = min(config.model.max_length, encoder.config.max_position_embeddings)
    tokenizer = Tokenizer.from_pretrained(config.model.checkpoint, max_length)
    torch.manual_seed(config.train.seed)  # the heads' initialisation
    model = MultiTaskModel(encoder, tasks, config.model.pair_encoding, config.model.pooling,
                           config.model.head_dropout, config.model.similarity_head)
    return model, tokenizer


@dataclass
class LoadedRun:
    folder: RunFolder
    config: RunConfig
    tasks: dict[str, Task]
    model: MultiTaskModel
    tokenizer: Tokenizer
    metrics: dict  # the best model's dev metrics as logged when it was saved


def is_export(path: str | Path) -> bool:
    """A folder written by `minbert export` (heads.json beside an HF encoder)."""
    return (Path(path) / "heads.json").is_file() and not (Path(path) / "best.pt").exists()


def check_run_folder(run_dir: str | Path) -> RunFolder:
    """The folder of a run with at least one finished epoch (or of an export), checked
    before any loading."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise RunError(f"{folder.path}: no such run folder")
    needed = (folder.path / "heads.json", folder.path / "heads.safetensors") \
        if is_export(folder.path) else (folder.config_file, folder.best)
    for path in needed:
        if not path.is_file():
            raise RunError(f"{path}: not found; is {folder.path} a run folder with at least "
                           "one finished epoch?")
    return folder


def load_run(run_dir: str | Path) -> LoadedRun:
    """The config, tasks, tokenizer and best model (in eval mode, on the CPU) of a run, or
    of the folder `minbert export` wrote from one."""
    folder = check_run_folder(run_dir)
    if is_export(folder.path):
        return _load_export(folder)
    config = folder.read_config()
    tasks = build_tasks(config)
    state = load_state(folder.best)
    model, tokenizer = build_model(config, tasks)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RunError(f"{folder.best}: its weights do not fit the model that "
                       f"{folder.config_file} describes ({str(e).splitlines()[0]})") from None
    return LoadedRun(folder, config, tasks, model.eval(), tokenizer, state.get("metrics", {}))


def _load_export(folder: RunFolder) -> LoadedRun:
    from safetensors.torch import load_file
    info = folder.path / "heads.json"
    try:
        values = json.loads(info.read_text(encoding="utf-8"))["run_config"]
        if not isinstance(values, dict):
            raise TypeError(f"run_config is {type(values).__name__}, not a table")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
            RecursionError) as e:
        raise RunError(f"{info}: not written by this minbert's export (no run config: "
                       f"{first_line(e)}); export the run again") from None
    config = build_config(values, str(info))
    config.model.checkpoint = str(folder.path)  # the fine-tuned encoder and its tokenizer
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    heads = load_file(str(folder.path / "heads.safetensors"))
    own = {k.removeprefix(OWN_LAYERS): heads.pop(k) for k in list(heads)
           if k.startswith(OWN_LAYERS)}
    try:
        model.heads.load_state_dict(heads)
        model.task_layers.load_state_dict(own)
    except RuntimeError as e:
        raise RunError(f"{folder.path / 'heads.safetensors'}: the heads do not fit "
                       f"{info} ({str(e).splitlines()[0]})") from None
    return LoadedRun(folder, config, tasks, model.eval(), tokenizer, {})


def init_folder(init_from: str | Path, seed: int) -> Path:
    """The run that `model.init_from` names for a run of `seed`: the folder itself, or the
    seed's run of a --seeds folder."""
    folder = Path(init_from)
    if not (folder / "config.json").is_file():
        seeded = folder / f"seed-{seed}"
        if (seeded / "config.json").is_file():
            return seeded
        if any(folder.glob("seed-*")):
            raise RunError(f"model.init_from = {str(folder)!r}: a --seeds folder without a "
                           f"run for seed {seed} (seed-{seed}/)")
    return folder


def start_from_run(model: MultiTaskModel, init_from: str | Path, seed: int) -> Path:
    """`model.init_from`: the encoder's weights and those of the heads of the tasks both
    share, from a finished run's best model; tasks the run lacks keep their fresh heads.
    Returns the run's folder."""
    try:
        source = load_run(init_folder(init_from, seed))
    except RunError as e:
        raise RunError(f"model.init_from: {e}") from None
    where = f"model.init_from = {str(source.folder.path)!r}"
    if source.model.encoder.config.vocab_size != model.encoder.config.vocab_size:
        raise RunError(f"{where}: its encoder has another vocabulary "
                       f"({source.model.encoder.config.vocab_size} tokens, this run's "
                       f"{model.encoder.config.vocab_size}); start from a run of the same "
                       "model.checkpoint")
    try:
        model.encoder.load_state_dict(source.model.encoder.state_dict())
    except RuntimeError as e:
        raise RunError(f"{where}: its encoder does not fit this run's model.checkpoint "
                       f"({first_line(e)})") from None
    for name in set(model.heads.keys()) & set(source.model.heads.keys()):
        try:
            model.heads[name].load_state_dict(source.model.heads[name].state_dict())
        except RuntimeError as e:
            raise RunError(f"{where}: its {name} head has another shape (its pooling, "
                           f"pool_layers or pair encoding differ: {first_line(e)})") from None
    for name in model.task_layers:  # from the top layers as the run's task read them
        model.load_task_layers(name, source.model.encoder_state(name))
    return source.folder.path
