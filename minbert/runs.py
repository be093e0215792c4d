"""A run: what a config builds (tasks, model, tokenizer, encoded splits) and the folder
that holds everything it produced.

    RUN_DIR/config.json     the full config, written when the run starts
    RUN_DIR/log.jsonl       one JSON record a line: start, step windows, epochs, resumes
    RUN_DIR/checkpoint.pt   the resumable state (every train.checkpoint_every updates)
    RUN_DIR/best.pt         the model with the best overall score on the selection split
                            (dev, or data.validation's held-out split; then also its dev
                            scores), its metrics and config
    RUN_DIR/predictions/    leaderboard files (the best model's dev files; `minbert predict`)
    RUN_DIR/run.lock        held by the process that trains in the folder
    RUN_DIR/seed-N/, seeds.json   with `--seeds`: one such run per seed, and their summary

Run files are written atomically (a temporary file of this process, then a rename) and
read with `torch.load(weights_only=True)`: tensors and plain containers only, so a
shared run folder cannot run code. A folder belongs to one training process at a time,
and a run is never replaced by accident: a folder that holds one resumes it or is
refused, unless the user asks to overwrite it (a run killed before its first checkpoint,
which kept nothing, simply starts again).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import socket
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minbert.config import ConfigKeyError, RunConfig, build_config
from minbert.data import EncodedTask
from minbert.model import BertModel
from minbert.multitask import MultiTaskModel
from minbert.tasks import Task, build_task
from minbert.tokenizer import Tokenizer

# config keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"run_dir", "data.dir", "data.eval_batch_size", "train.device",
                     "train.checkpoint_every", "train.log_every", "train.max_steps",
                     "train.tensorboard", "train.compile", "train.compile_backend"}
# sections that configure other commands (minbert pretrain, minbert tune): a training run
# resumes whatever they say
OTHER_COMMANDS = ("pretrain.", "tune")
# what a run writes into its folder (and what --overwrite removes)
RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "best.pt", "dev-metrics.json")
RUN_FOLDERS = ("predictions", "tensorboard")


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message names the file."""


# ---------------------------------------------------------------------- building a run
def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """'auto' is CUDA when present, else the CPU; under torchrun, 'cuda' is the rank's GPU.
    A device this machine does not have is an error naming `option`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise ConfigKeyError(f"{option} = {name!r}: this machine has "
                                 f"{count or 'no'} CUDA device(s); use auto or cpu")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigKeyError(f"{option} = 'mps': MPS is not available here; use auto or cpu")
    return torch.device(name)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `precision` ('auto', 'bf16', 'fp32') on `device` (None: fp32),
    and why. 'auto' is bf16 where the hardware computes it natively (a CUDA GPU with bf16; a
    CPU with avx512_bf16 or AMX), where it measured 1.8x faster per training step on CPU;
    elsewhere bf16 is emulated and slower, so fp32."""
    if name == "fp32":
        return None, "fp32 (asked for)"
    if name == "bf16":
        return torch.bfloat16, "bf16 autocast (asked for)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast (auto: the GPU supports bf16)"
        return None, "fp32 (auto: the GPU has no bf16)"
    if device.type == "cpu":
        native = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
        if native:
            return torch.bfloat16, f"bf16 autocast (auto: the CPU has {' and '.join(native)})"
        return None, "fp32 (auto: the CPU has neither avx512_bf16 nor amx_bf16)"
    return None, f"fp32 (auto: no bf16 rule for {device.type})"


def build_tasks(config: RunConfig) -> dict[str, Task]:
    return {name: build_task(name, dict(config.tasks.get(name, {})))
            for name in config.data.tasks}


def build_model(config: RunConfig, tasks: dict[str, Task]) -> tuple[MultiTaskModel, Tokenizer]:
    encoder = BertModel.from_pretrained(config.model.checkpoint)
    max_length = min(config.model.max_length, encoder.config.max_position_embeddings)
    tokenizer = Tokenizer.from_pretrained(config.model.checkpoint, max_length)
    torch.manual_seed(config.train.seed)  # the heads' initialisation
    model = MultiTaskModel(encoder, tasks, config.model.pair_encoding, config.model.pooling,
                           config.model.head_dropout, config.model.similarity_head)
    return model, tokenizer


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


def read_split(config: RunConfig, task: Task, split: str, labelled: bool = True):
    """One split ('dev' or 'test') of a task as Examples (dev cut to data.dev_limit), or
    None when the task has no such file."""
    file = task.dev_file if split == "dev" else task.test_file
    if not file:
        return None
    examples = task.read(Path(config.data.dir) / file, labelled=labelled)
    if split == "dev" and config.data.dev_limit:
        examples = examples.subset(range(min(len(examples), config.data.dev_limit)))
    return examples


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


# ---------------------------------------------------------------------- run files
def save_state(state: dict, path: Path) -> None:
    """Writes `state` to a temporary file of this process, then renames it over `path`:
    a kill at any point leaves the previous file whole."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


try:  # arrays in checkpoints written before training outputs were stored as tensors
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_NUMPY_GLOBALS = [np.ndarray, np.dtype, _reconstruct,
                  *{type(np.dtype(t)) for t in (np.int64, np.float64, np.int32, np.float32)}]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def load_state(path: Path, required: tuple[str, ...] = ("model",),
               map_location="cpu") -> dict:
    """A run file read without running code from it (weights_only); errors name the file."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        raise RunError(f"{path}: refused to load: it holds objects other than tensors and "
                       f"plain values, which could run code ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise RunError(f"{path}: cannot be read; truncated, or not a minbert run file "
                       f"({_first_line(e)})") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise RunError(f"{path}: not a minbert run file (no {', '.join(missing)})")
    return state


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "tasks":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, config: RunConfig) -> list[str]:
    """'key: old -> new' for each setting that differs and may not change on resume. A key
    the saved config lacks (a setting added since the run started) counts at its default."""
    defaults = _flatten(RunConfig().to_dict())
    current = _flatten(config.to_dict())
    saved = {**{k: v for k, v in defaults.items() if k in current}, **_flatten(saved)}
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
            for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES
            and not k.startswith(OTHER_COMMANDS)]


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.log_file = self.path / "log.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.predictions = self.path / "predictions"
        self.lock_file = self.path / "run.lock"
        self._lock_fd = None

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def final_record(self) -> dict | None:
        """The log's "final" record (the chosen model's dev scores, written once when the
        run ends), or None while there is none."""
        try:
            lines = self.log_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("type") == "final":
                return record
        return None

    def read_config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise RunError(f"{self.config_file}: not found; is {self.path} a run folder "
                           "written by `minbert train`?")
        try:
            values = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{self.config_file}: not a JSON config ({e})") from None
        return build_config(values, str(self.config_file))

    # ------------------------------------------------------------------ ownership
    def lock(self) -> None:
        """Takes the folder for this process (released when it exits, even by kill -9).
        Another live process holding it is an error naming its PID."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path} is in use by {holder}; wait for it to finish, stop "
                           "it, or use another run_dir") from None
        previous = os.read(fd, 200).decode("utf-8", "replace").strip()
        if previous:  # its holder died without releasing it (flock went with the process)
            print(f"minbert: taking over {self.lock_file} from {previous}, which is no "
                  "longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd
        for name in RUN_FILES:  # temporary files of killed writers: nobody else writes here
            for stale in self.path.glob(f"{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def in_use(self) -> bool:
        """Whether a live process holds the folder's lock (this one included)."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock it took
        return False

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)  # empty: released cleanly
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def saved_config_changes(self, config: RunConfig) -> list[str]:
        """How `config` differs from the run's config.json (keys that may not change)."""
        try:
            saved = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{self.config_file}: not a JSON config ({e})") from None
        return config_changes(saved, config)

    @contextlib.contextmanager
    def claim(self, config: RunConfig, overwrite: bool = False):
        """Locks the folder and checks it before any work. A new run starts; the same run
        resumes from its checkpoint (the config may change only in RESUMABLE_CHANGES); a
        run killed before its first checkpoint, with nothing else kept, starts again. A
        different config, or a run with results but no checkpoint (say, a finished run
        whose checkpoint.pt was deleted: its predictions or its log's final record count as
        results), is refused unless `overwrite`."""
        self.lock()
        try:
            changes = (self.saved_config_changes(config)
                       if self.config_file.is_file() and not overwrite else [])
            if changes:
                raise RunError(f"{self.path} holds a run of a different config "
                               f"({', '.join(changes)}); use another run_dir, the same "
                               "config, or --overwrite to replace it")
            kept = [n for n in ("best.pt", "dev-metrics.json", "predictions")
                    if (self.path / n).exists()]
            if self.final_record() is not None:
                kept.append("a final record in log.jsonl")
            if overwrite or not self.checkpoint.exists() and not kept:
                self.clear()  # nothing here that the run would not compute again
            elif not self.checkpoint.exists():
                raise RunError(f"{self.path} already holds a run ({', '.join(kept)}) with no "
                               "checkpoint.pt to resume from; use another run_dir, or "
                               "--overwrite to replace it")
            yield self
        finally:
            self.unlock()

    def clear(self) -> None:
        """Removes what a run wrote here (other files in the folder are left alone)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)


# ---------------------------------------------------------------------- finished runs
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
    except RuntimeError as e:
        raise RunError(f"{folder.best}: its weights do not fit the model that "
                       f"{folder.config_file} describes ({str(e).splitlines()[0]})") from None
    return LoadedRun(folder, config, tasks, model.eval(), tokenizer, state.get("metrics", {}))


def _load_export(folder: RunFolder) -> LoadedRun:
    from safetensors.torch import load_file
    info = folder.path / "heads.json"
    try:
        values = json.loads(info.read_text(encoding="utf-8"))["run_config"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
        raise RunError(f"{info}: not written by this minbert's export (no run config: "
                       f"{_first_line(e)}); export the run again") from None
    config = build_config(values, str(info))
    config.model.checkpoint = str(folder.path)  # the fine-tuned encoder and its tokenizer
    tasks = build_tasks(config)
    model, tokenizer = build_model(config, tasks)
    heads = load_file(str(folder.path / "heads.safetensors"))
    try:
        model.heads.load_state_dict(heads)
    except RuntimeError as e:
        raise RunError(f"{folder.path / 'heads.safetensors'}: the heads do not fit "
                       f"{info} ({str(e).splitlines()[0]})") from None
    return LoadedRun(folder, config, tasks, model.eval(), tokenizer, {})


def writable_folder(path: str | Path, what: str) -> Path:
    """Creates `path` if needed and checks that files can be written there, before work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"{path}: cannot create the {what} folder ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"{path}: the {what} folder is not writable")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
