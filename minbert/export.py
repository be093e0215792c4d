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

from minbert.multitask import OWN_LAYERS
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


def export(run_dir: str | Path, out: str | Path, task: str | None = None,
           onnx: bool = False) -> list[str]:
    """`minbert export`: the run in `run_dir` written to `out` (replaced whole, or left as
    it was), as the full export (with ONNX graphs if asked) or, with `task`, that task as
    a transformers classification folder; returns what was written, a line each."""
    from minbert.loading import check_run_folder, load_run
    folder = check_run_folder(run_dir)
    check_export_target(folder.path, out)
    run = load_run(folder.path)
    if task:
        if task not in run.tasks:
            raise ValueError(f"--task {task}: the run has {', '.join(run.tasks)}")
        with replacing(out) as tmp:
            what = export_task(run.model, run.config, run.tasks[task], tmp, run.metrics)
        return [f"wrote {out}: {task} as {what}"]
    graphs = []
    with replacing(out) as tmp:
        export_run(run.model, run.config, tmp, run.tasks, run.metrics)
        if onnx:
            from minbert.onnx_backend import export_onnx
            graphs = [path.relative_to(tmp) for path in export_onnx(run.model, run.tasks, tmp)]
    return [*(f"wrote {Path(out) / path}" for path in graphs),
            f"wrote {out} (HF BertModel folder) with heads.safetensors and heads.json"]


def export_run(model, config, out: str | Path, tasks: dict | None = None,
               metrics: dict | None = None) -> Path:
    """The run's encoder as an HF BertModel folder, its heads beside it (heads.safetensors,
    heads.json) and a model card (README.md); no local paths, files readable by all."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    max_length = _write_hf_folder(out, config, encoder, {"architectures": ["BertModel"]},
                                  encoder.state_dict())
    heads = {f"{task}.{key}": value.detach().contiguous()
             for task, head in model.heads.items() for key, value in head.state_dict().items()}
    heads.update({f"{OWN_LAYERS}{key}": value.detach().contiguous()
                  for key, value in model.task_layers.state_dict().items()})
    save_file(heads, str(out / "heads.safetensors"))
    run_config = config.to_dict()  # without local paths: the loader's defaults take their place
    del run_config["run_dir"], run_config["data"]["dir"], run_config["model"]["checkpoint"]
    described = {name: _describe(name, task, model) for name, task in (tasks or {}).items()}
    (out / "heads.json").write_text(json.dumps({
        "pair_encoding": config.model.pair_encoding, "pooling": config.model.pooling,
        "similarity_head": config.model.similarity_head, "max_length": max_length,
        "heads": {task: type(head).__name__ for task, head in model.heads.items()},
        "tasks": config.data.tasks, "task_outputs": described,
        "run_config": run_config},  # what minbert.load needs to rebuild the tasks
        indent=2), encoding="utf-8")
    (out / "README.md").write_text(model_card(config, described, metrics or {}, max_length),
                                   encoding="utf-8")
    _readable(out)
    return out


def _write_hf_folder(out: Path, config, encoder, settings: dict, weights: dict) -> int:
    """config.json (the encoder's, with `settings`), model.safetensors (`weights`) and the
    tokenizer files, its max length as trained; returns that length."""
    hf = {**encoder.config.to_dict(), "model_type": "bert", **settings}
    (out / "config.json").write_text(json.dumps(hf, indent=2), encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    source = resolve_checkpoint(config.model.checkpoint)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            try:
                shutil.copy(source / name, out / name)
            except OSError as e:  # named by what could not be written, not its source
                raise OSError(e.errno, e.strerror, str(out / name)) from None
    max_length = min(config.model.max_length, encoder.config.max_position_embeddings)
    _set_max_length(out / "tokenizer_config.json", max_length)
    return max_length


def _readable(out: Path) -> None:
    """Files readable by all (a save may leave them private to the writer)."""
    for path in out.rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def _describe(name, task, model) -> dict:
    pooling, layers = model.poolings[name]
    return {"kind": task.kind, "inputs": list(task.text_columns),
            "encoding": model.encodings[name], "pooling": pooling, "pooled_layers": layers,
            "own_layers": len(model.task_layers[name]) if name in model.task_layers else 0,
            "head": type(model.heads[name]).__name__, "output": task.output_description,
            "label_names": task.class_names, "range": task.value_range}


def _set_max_length(path: Path, max_length: int) -> None:
    """tokenizer_config.json says the length the model was trained at, not the base's."""
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings["model_max_length"] = max_length
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def model_card(config, tasks: dict, metrics: dict, max_length: int) -> str:
    """README.md of an export: what it predicts, how, how well, and how to load it."""
    lines = ["---", "library_name: minbert", "tags: [bert, multi-task, minbert]", "---", "",
             "# A minbert multi-task model", "",
             f"Fine-tuned from `{Path(str(config.model.checkpoint)).name}` with minbert on "
             f"{', '.join(config.data.tasks)}; inputs up to {max_length} tokens.", "",
             "| task | inputs | encoding | pooling | output | labels |",
             "|---|---|---|---|---|---|"]
    for name, info in tasks.items():
        labels = ", ".join(info["label_names"] or []) or (
            f"score on [{info['range'][0]:g}, {info['range'][1]:g}]" if info["range"] else "")
        lines.append(f"| {name} | {' + '.join(info['inputs'])} | {info['encoding']} | "
                     f"{info['pooling']} (top {info['pooled_layers']} layer(s)) | "
                     f"{info['output']} | {labels} |")
    if metrics:
        lines += ["", "Dev scores of the run (CS224N dev files; overall = the mean of the "
                  "accuracies and (r + 1) / 2 for a correlation):", "",
                  "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
                  "| " + " | ".join(f"{v:.4f}" for v in metrics.values()) + " |"]
    lines += ["", "## Load it", "", "With minbert (every task head):", "",
              "    import minbert", "    model = minbert.load(\"PATH\")",
              f"    model.predict(\"{config.data.tasks[0]}\", ...)", "",
              "The encoder alone is a standard BERT (`transformers.BertModel.from_pretrained"
              "(\"PATH\")`); the task heads are in heads.safetensors, described in "
              "heads.json, and only minbert applies them."]
    own = {name: info["own_layers"] for name, info in tasks.items() if info["own_layers"]}
    if own:
        lines += ["", "The encoder's top layers here are those the other tasks share; "
                  + ", ".join(f"{name} reads its own copy of the top {n} layer(s)"
                              for name, n in own.items())
                  + " (in heads.safetensors; `minbert export RUN OUT --task NAME` writes that "
                  "task's encoder as a standard BERT)."]
    return "\n".join(lines) + "\n"


def load_heads(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(Path(folder) / "heads.safetensors"))


def export_task(model, config, task, out: str | Path, metrics: dict | None = None) -> str:
    """One task in the format its tools load, saying which: a bi-encoded pair scored by
    cosine as a sentence-transformers `SentenceTransformer` folder (`export_bi_encoder`),
    anything else as a `BertForSequenceClassification` folder (`export_classifier`)."""
    from minbert.multitask import CosinePairHead
    if model.encodings[task.name] == "bi" and isinstance(model.heads[task.name],
                                                         CosinePairHead):
        export_bi_encoder(model, config, task, out, metrics)
        return ("a sentence-transformers SentenceTransformer folder (its cosine "
                "similarity is the task's score before the head's scale)")
    export_classifier(model, config, task, out, metrics)
    return ("a transformers BertForSequenceClassification folder (pipeline(\"text-"
            "classification\", model=...); a pair task also loads as a sentence-"
            "transformers CrossEncoder)")


def export_bi_encoder(model, config, task, out: str | Path, metrics: dict | None = None
                      ) -> Path:
    """A bi-encoded pair task scored by cosine as a `SentenceTransformer` folder: the
    encoder (an HF BertModel at the top) and its pooling (1_Pooling, modules.json), so
    `SentenceTransformer(OUT).similarity(...)` gives the cosine c of the run's sentence
    vectors; the run's score is low + (high − low) · sigmoid(scale · c + shift), with the
    head's learned scale and shift written in the model card."""
    name = task.name
    pooling, layers = model.poolings[name]
    if pooling not in ("mean", "cls") or layers != 1:
        raise ValueError(
            f"export --task {name}: sentence-transformers pools the last layer by its mean "
            f"or [CLS]; this run's {name} head reads {pooling} pooling of the top {layers} "
            "layer(s); use the full export with minbert.load")
    if model.heads[name].projection is not None:
        raise ValueError(
            f"export --task {name}: this run's {name} head maps each sentence vector through "
            f"its own linear layer (tasks.{name}.projection) before the cosine, which this "
            "export does not write; use the full export with minbert.load")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    max_length = _write_hf_folder(out, config, encoder, {"architectures": ["BertModel"]},
                                  model.encoder_state(name))
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"}],
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {"similarity_fn_name": "cosine",
                                              "model_type": "SentenceTransformer"},
        "1_Pooling/config.json": {
            "word_embedding_dimension": encoder.config.hidden_size,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}}
    (out / "1_Pooling").mkdir()
    for path, value in files.items():
        (out / path).write_text(json.dumps(value, indent=2), encoding="utf-8")
    head = model.heads[name]
    scale, shift = float(head.scale.detach()), float(head.shift.detach())
    low, high = task.value_range
    how = ("With sentence-transformers: `SentenceTransformer(\"PATH\")`; "
           "`model.similarity(model.encode(a), model.encode(b))` is the cosine c, and this "
           f"run's {name} score is {low:g} + {high - low:g} · sigmoid({scale:.6g} · c + "
           f"{shift:.6g}).")
    card = model_card(config, {name: _describe(name, task, model)}, metrics or {},
                      max_length).replace("## Load it", f"## Load it\n\n{how}\n", 1)
    (out / "README.md").write_text(card, encoding="utf-8")
    _readable(out)
    return out


def export_classifier(model, config, task, out: str | Path, metrics: dict | None = None
                      ) -> Path:
    """One task as a standard `BertForSequenceClassification` folder, which transformers'
    `pipeline("text-classification", model=OUT)` (with `text_pair` for a pair) and
    sentence-transformers' `CrossEncoder(OUT)` load with the run's weights, head included:
    classes with their names (`id2label`); a binary task as two logits [0, z], so softmax
    gives sigmoid(z); a score task as one logit, whose sigmoid the pipeline (and the
    CrossEncoder) returns (the score is low + (high − low) · that). Only a head that BERT's
    own classifier is can be written so: the pooler's output (`pooling = "pooler"`), one
    linear layer, a single sentence or a cross-encoded pair."""
    name = task.name
    pooling, layers = model.poolings[name]
    head = model.heads[name]
    if model.encodings[name] not in ("single", "cross") or pooling != "pooler" \
            or not hasattr(head, "out"):
        raise ValueError(
            f"export --task {name}: transformers' BertForSequenceClassification classifies "
            f"BERT's pooler output of one sequence; this run's {name} head reads "
            f"{pooling} pooling of {model.encodings[name]!r}-encoded inputs, which it cannot "
            f"express. Train with tasks.{name}.pooling = \"pooler\" (and a cross-encoded pair) "
            "to export it so, or use the full export with minbert.load")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    weight, bias = head.out.weight.detach(), head.out.bias.detach()
    binary = task.class_names is not None and len(task.class_names) == 2 and weight.shape[0] == 1
    if binary:  # softmax([0, z]) = [1 − sigmoid(z), sigmoid(z)]
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    labels = task.class_names or [f"{name} (sigmoid; score = low + (high - low) * it)"]
    weights = {f"bert.{k}": v for k, v in model.encoder_state(name).items()}
    weights.update({"classifier.weight": weight, "classifier.bias": bias})
    max_length = _write_hf_folder(out, config, encoder, {
        "architectures": ["BertForSequenceClassification"], "num_labels": len(labels),
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification" if task.class_names else "regression"},
        weights)
    described = {name: _describe(name, task, model)}
    card = model_card(config, described, metrics or {}, max_length).replace(
        "## Load it", "## Load it\n\nWith transformers: `pipeline(\"text-classification\", "
        "model=\"PATH\")`" + (" with `{\"text\": a, \"text_pair\": b}` inputs" if task.is_pair
                              else "") + ".\n", 1)
    (out / "README.md").write_text(card, encoding="utf-8")
    _readable(out)
    return out
