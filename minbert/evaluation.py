"""Scoring as the CS224N leaderboard does: model outputs over a split, per-task metrics and
the overall score (prediction files are written and read by minbert/runs.py)."""
from __future__ import annotations

import numpy as np
import torch

from minbert import distributed
from minbert.data import EncodedTask
from minbert.devices import inference_weights
from minbert.progress import Progress
from minbert.tasks import Task


def overall_score(metrics: dict[str, float], tasks: dict[str, Task]) -> float:
    """Mean of the task metrics with a correlation r counted as (r + 1) / 2; for the three
    built-ins that is (sst_acc + quora_acc + (sts_corr + 1) / 2) / 3."""
    parts = [task.overall_share(metrics[name]) for name, task in tasks.items() if name in metrics]
    return float(np.mean(parts))


@torch.inference_mode()
def outputs(model, task: Task, data: EncodedTask, batch_size: int, device,
            autocast_dtype=None, progress: bool = False) -> torch.Tensor:
    """The model's outputs (examples, task.num_outputs) for every example of `data`, in file
    order; batches sorted by length (little padding), under `autocast_dtype` (None: fp32)."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(data), task.num_outputs, dtype=torch.float64)
    batches = list(data.sorted_batches(batch_size))
    mine = batches[distributed.rank()::distributed.world_size()]  # DDP: a share
    with Progress(len(mine), f"scoring {data.name}", unit="batch",
                  enabled=progress and distributed.is_main()) as bar, \
            inference_weights(model, autocast_dtype, device):
        for indices in mine:
            batch = data.batch(indices).to(device)
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                logits = model(batch).float()
            out[torch.as_tensor(indices)] = logits.cpu().double()
            bar.update()
    model.train(was_training)
    if distributed.active():  # every rank filled its own batches; the sum is all of them
        out = distributed.all_reduce_sum_(out.to(device)).cpu()
    return out


def predict(model, task: Task, data: EncodedTask, batch_size: int, device,
            autocast_dtype=None, progress: bool = False) -> np.ndarray:
    """Predictions in label units for every example of `data`, in file order."""
    logits = outputs(model, task, data, batch_size, device, autocast_dtype, progress)
    return task.predict(logits.float()).double().numpy()


def evaluate(model, tasks: dict[str, Task], datasets: dict[str, EncodedTask], batch_size: int,
             device, autocast_dtype=None, progress: bool = False
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-task metric and the overall score on labelled splits; also the predictions."""
    metrics, predictions = {}, {}
    for name, data in datasets.items():
        predictions[name] = predict(model, tasks[name], data, batch_size, device, autocast_dtype,
                                    progress)
        metrics[name] = tasks[name].metric(predictions[name], data.examples.labels)
    metrics["overall"] = overall_score(metrics, tasks)
    return metrics, predictions


def format_table(metrics: dict[str, float], tasks: dict[str, Task], title: str = "dev") -> str:
    rows = [f"{'task':<10}{'metric':<10}{title:>8}"]
    rows += [f"{name:<10}{tasks[name].metric_name:<10}{metrics[name]:>8.3f}"
             for name in tasks if name in metrics]
    rows.append(f"{'overall':<10}{'':<10}{metrics['overall']:>8.3f}")
    return "\n".join(rows)
