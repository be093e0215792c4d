"""A run's folder: everything a training (or an evaluation) produced, and how to read it.

    RUN_DIR/config.json     the full config, written when the run starts
    RUN_DIR/log.jsonl       one JSON record a line: start, step windows, epochs, resumes
    RUN_DIR/checkpoint.pt   the resumable state (every train.checkpoint_every updates)
    RUN_DIR/best.pt         the model with the best overall score on the selection split
                            (dev, or data.validation's held-out split; then also its dev
                            scores), its metrics and config
    RUN_DIR/predictions/    the best model's dev predictions in the leaderboard's format
    RUN_DIR/leaderboard/    `minbert predict RUN`'s dev and test files
    RUN_DIR/run.lock        held by the process that trains in the folder
    RUN_DIR/seed-N/, seeds.json   `--seeds`: one run per seed, their summary (seeds.py)
    RUN_DIR/specialist-TASK/      `--specialists`, `--finetune`: a run (or seeds) per task

`RunFolder` owns these formats: every other module asks it to append or read log
records, or to lock, claim or clear the folder; minbert/outputs.py reads what a finished
run produced (its prediction files, for reports and comparisons). Reading a finished run
needs only its files: its config is read as data, never rebuilt into methods, so a run
stays readable when a teacher folder moves or the tuner's rules change. An evaluation
folder (`minbert evaluate RUNS --out DIR`) has the same files, with an "evaluation"
record as its log.

Run files are written atomically (a temporary file of this process, then a rename) and
read with `torch.load(weights_only=True)`: tensors and plain containers only, so a
shared run folder cannot run code. A folder belongs to one training process at a time,
and a run is never replaced by accident: a folder that holds one resumes it or is
refused, unless the user asks to overwrite it (a run killed before its first checkpoint,
which kept nothing, simply starts again).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from minbert.config import RunConfig, build_config, flatten

# config keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"run_dir", "data.dir", "data.eval_batch_size", "train.device",
                     "train.checkpoint_every", "train.log_every", "train.max_steps",
                     "train.tensorboard", "train.compile", "train.compile_backend"}
# sections that configure other commands (minbert pretrain, minbert tune): a training run
# resumes whatever they say
OTHER_COMMANDS = ("pretrain.", "tune")
# what a run writes into its folder (and what --overwrite removes)
RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "best.pt", "dev-metrics.json")
RUN_FOLDERS = ("predictions", "tensorboard", "leaderboard")


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message names the file."""


# ---------------------------------------------------------------------- run files
def save_state(state: dict, path: Path) -> None:
    """Writes `state` to a temporary file of this process, then renames it over `path`:
    a kill at any point leaves the previous file whole."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except RuntimeError as e:  # torch's writer: "unexpected pos ..." on a full disk
        raise OSError(errno.EIO, f"could not be written ({first_line(e)}); is the disk "
                      "full?", str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


try:  # arrays in checkpoints written before training outputs were stored as tensors
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_NUMPY_GLOBALS = [np.ndarray, np.dtype, _reconstruct,
                  *{type(np.dtype(t)) for t in (np.int64, np.float64, np.int32, np.float32)}]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:600] if text else type(error).__name__


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
                       f"plain values, which could run code ({first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise RunError(f"{path}: cannot be read; truncated, or not a minbert run file "
                       f"({first_line(e)})") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise RunError(f"{path}: not a minbert run file (no {', '.join(missing)})")
    return state


def config_changes(saved: dict, config: RunConfig) -> list[str]:
    """'key: old -> new' for each setting that differs and may not change on resume. A key
    the saved config lacks (a setting added since the run started) counts at its default."""
    defaults = flatten(RunConfig().to_dict())
    current = flatten(config.to_dict())
    saved = {**{k: v for k, v in defaults.items() if k in current}, **flatten(saved)}
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
            for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES
            and not k.startswith(OTHER_COMMANDS)]


def _open_plain(path: Path, flags: int) -> int:
    """os.open that refuses a symbolic link: a run file in a shared folder that points
    elsewhere would have its target truncated or overwritten."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError:
        if path.is_symlink():
            raise RunError(f"{path}: is a symbolic link (to {os.readlink(path)}); a run "
                           "file must be a file of the run folder") from None
        raise


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

    # ------------------------------------------------------------------ log.jsonl
    def append(self, record: dict) -> dict:
        """Appends one record (stamped with the time) to the log; returns it."""
        record = {"time": round(time.time(), 1), **record}
        fd = _open_plain(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8") as fp:
            fp.write(json.dumps(record) + "\n")
        return record

    def records(self, kind: str | None = None) -> list[dict]:
        """The log's records (of one `kind`: "start", "step", "epoch", "final", ...), in
        order. A last line cut short by a kill is left out; any other line that is not a
        record is an error naming the file and line."""
        try:
            text = self.log_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as e:
            raise RunError(f"{self.log_file}: not UTF-8 text ({e.reason} at byte {e.start})"
                           ) from None
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # no newline after it: a write cut short
                    break
                raise RunError(f"{self.log_file}, line {number}: not a JSON record") from None
            if not isinstance(record, dict) or not isinstance(record.get("type"), str):
                raise RunError(f"{self.log_file}, line {number}: a record without a type")
            if kind is None or record["type"] == kind:
                records.append(record)
        return records

    def final_record(self) -> dict | None:
        """The log's "final" record (the chosen model's dev scores, written once when the
        run ends), or None while there is none or the log cannot be read."""
        try:
            finals = self.records("final")
        except RunError:
            return None
        return finals[-1] if finals else None

    def log_size(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def truncate_log(self, size: int) -> None:
        """Drops what was logged after a checkpoint that recorded the log's `size`."""
        if self.log_file.exists():
            fd = _open_plain(self.log_file, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

    def is_evaluation(self) -> bool:
        """Whether the folder was written by `minbert evaluate --out` (not by training)."""
        try:
            with open(self.log_file, encoding="utf-8") as fp:
                first = json.loads(fp.readline())
        except (OSError, ValueError):
            return False
        return isinstance(first, dict) and first.get("type") == "evaluation"

    def write_config(self, values: dict) -> None:
        write_text_atomic(self.config_file, json.dumps(values, indent=2))

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
        fd = _open_plain(self.lock_file, os.O_RDWR | os.O_CREAT)
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
        resumes from its checkpoint (the config may change only in RESUMABLE_CHANGES); the
        same run stopped before its first checkpoint was written (killed, or a full disk,
        even after its first best.pt) starts again. A different config, or a finished run
        without its checkpoint (its log's final record: say, checkpoint.pt deleted to save
        space), or results without a config, is refused unless `overwrite`."""
        self.lock()
        try:
            foreign = self.foreign_files()
            if foreign and not overwrite:
                raise RunError(f"{self.path} holds {', '.join(foreign)} but no training run of "
                               "its own (no config.json); use another run_dir, or --overwrite "
                               "to replace them")
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
            unfinished = kept and "a final record in log.jsonl" not in kept \
                and self.config_file.is_file()  # the same run, stopped before its checkpoint
            if overwrite or not self.checkpoint.exists() and (not kept or unfinished):
                if unfinished and not overwrite:
                    print(f"{self.path}: an unfinished run without checkpoint.pt (stopped "
                          "before its first one was written); starting it again",
                          file=sys.stderr)
                self.clear()  # nothing here that the run would not compute again
            elif not self.checkpoint.exists():
                raise RunError(f"{self.path} already holds a run ({', '.join(kept)}) with no "
                               "checkpoint.pt to resume from; use another run_dir, or "
                               "--overwrite to replace it")
            yield self
        finally:
            self.unlock()

    def foreign_files(self) -> list[str]:
        """What another tool (or a user) left here that a training run would remove: run
        files without the run's config.json, an evaluation's or a pretraining's files."""
        names = [n for n in (*RUN_FILES, *RUN_FOLDERS) if (self.path / n).exists()]
        if (self.path / "pretrain.json").exists():
            return ["a pretraining (pretrain.json)"]
        if self.is_evaluation():
            return ["an evaluation (minbert evaluate --out)"]
        return names if names and not self.config_file.is_file() else []

    def clear(self) -> None:
        """Removes what a run wrote here (other files in the folder are left alone)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)


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


def seed_runs(folder: str | Path) -> list[Path]:
    """The seed-N runs of a `--seeds` folder (those with a config.json), by seed; [] for
    any other folder."""
    runs = [p for p in Path(folder).glob("seed-*") if p.name[5:].isdigit()
            and (p / "config.json").is_file()]
    return sorted(runs, key=lambda p: int(p.name[5:]))


SPECIALIST = "specialist-"  # RUN/specialist-TASK/: one task's run of a --specialists recipe


def specialist_runs(folder: str | Path) -> dict[str, Path]:
    """task -> its folder, for a folder that `minbert train --specialists` wrote ({} for
    any other folder)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return {}
    return {p.name[len(SPECIALIST):]: p for p in sorted(folder.glob(SPECIALIST + "*"))
            if p.is_dir()}


def expand_seeds(folders: list[str | Path]) -> list[str]:
    """Folders with each `--seeds` folder replaced by its seed runs, and each folder of
    specialists (`--specialists`) by every specialist's runs."""
    out = []
    for folder in folders:
        parts = list(specialist_runs(folder).values()) or [folder]
        for part in parts:
            runs = [] if (Path(part) / "config.json").is_file() else seed_runs(part)
            out.extend(map(str, runs) if runs else [str(part)])
    return out
