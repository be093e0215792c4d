"""Writes a run's fine-tuned encoder as an HF-format folder, and its heads beside it.

The folder (config.json, model.safetensors, vocab.txt / tokenizer files) loads with
`transformers.BertModel.from_pretrained` or `minbert.BertModel.from_pretrained`; the task
heads go to heads.safetensors with heads.json describing them (and the run's config), so
`minbert.load(OUT)` predicts with it as with the run folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from minbert.pretrained import resolve_checkpoint

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def check_export_target(run_dir: str | Path, out: str | Path) -> None:
    """An export never writes into the run it comes from (it would replace config.json),
    nor into a folder that holds anything but an earlier export (which it replaces)."""
    run, target = Path(run_dir).resolve(), Path(out).resolve()
    if target == run or run in target.parents:
        raise ValueError(f"export: OUT {out} is the run folder {run_dir} or inside it; give "
                         "a folder outside the run")
    if target.is_dir() and any(target.iterdir()) and not (target / "heads.json").is_file():
        raise ValueError(f"export: OUT {out} holds files that are not an export (a run, or "
                         "something else); give a new folder")


@contextlib.contextmanager
def replacing(out: str | Path):
    """A folder beside `out` to write into; on success it takes `out`'s place whole (an
    earlier export there is removed, nothing of it kept), on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_run(model, config, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    (out / "config.json").write_text(json.dumps(encoder.config.to_dict(), indent=2),
                                     encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    source = resolve_checkpoint(config.model.checkpoint)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    heads = {f"{task}.{key}": value.detach().contiguous()
             for task, head in model.heads.items() for key, value in head.state_dict().items()}
    save_file(heads, str(out / "heads.safetensors"))
    (out / "heads.json").write_text(json.dumps({
        "pair_encoding": config.model.pair_encoding, "pooling": config.model.pooling,
        "similarity_head": config.model.similarity_head,
        "heads": {task: type(head).__name__ for task, head in model.heads.items()},
        "tasks": config.data.tasks,
        "run_config": config.to_dict()},  # what minbert.load needs to rebuild the tasks
        indent=2), encoding="utf-8")
    return out


def load_heads(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "heads.safetensors"))
