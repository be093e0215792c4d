"""The optimizer set-up both trainers share (fine-tuning and masked-LM pretraining): AdamW
(fused) over BERT's parameter groups, and a linear warm-up followed by a linear decay to
zero."""
from __future__ import annotations

import torch
from torch import nn


def depth(name: str, layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, layers + 1 above (the pooler)."""
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) + 1
    return layers + 1


def param_groups(model: nn.Module, lr: float, head_lr: float = 0.0,
                 layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups of a module holding `encoder` (a BertModel) and task `heads`: heads at
    head_lr (0: lr); the top encoder layer (and anything above it) at lr, each layer below
    at layer_decay times the one above, the embeddings lowest (layer-wise lr decay; 1: one
    lr; a task's own top layers as the layers they copy); biases and LayerNorm without
    weight decay, as BERT does."""
    layers = model.encoder.config.num_hidden_layers
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("heads."):
            key = ("heads", 1.0)
        else:
            if name.startswith("task_layers."):  # as the encoder layer it is a copy of
                _, task, i, rest = name.split(".", 3)
                first = layers - len(model.task_layers[task])
                name = f"encoder.encoder.layer.{first + int(i)}.{rest}"
            scale = layer_decay ** max(0, layers - depth(name.removeprefix("encoder."), layers))
            key = ("decay" if p.ndim >= 2 else "no_decay", scale)
        groups.setdefault(key, []).append(p)
    out = []
    for (kind, scale), params in groups.items():
        group = {"params": params, "lr": (head_lr or lr) if kind == "heads" else lr * scale}
        if kind == "no_decay":
            group["weight_decay"] = 0.0
        out.append(group)
    return out


def adamw(groups: list[dict], lr: float, weight_decay: float, device: torch.device
          ) -> torch.optim.AdamW:
    """AdamW over `groups`, with torch's fused kernel on a CPU or CUDA device: the same update,
    one pass over each tensor instead of a dozen (a MiniLM update on 2 CPU cores: 76 ms per
    step unfused, 15 ms fused; benchmarks/train_speed.py)."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr rises linearly over `warmup` updates, then falls linearly to 0 at `total`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / max(1, warmup),
                                    max(0.0, (total - step) / max(1, total - warmup))))
