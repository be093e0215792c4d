"""The report's analyses of one task's dev predictions, registered by name. A task names
the ones that apply to it (`Task.analyses`); a new analysis is one function here (or in a
task kind's own module) registered with `@analysis("name")`. Each computes its numbers
and says how to show them: a `Section` of titled tables and figures, which the report
renders without knowing what they are.

Figures are drawn with matplotlib on the task's own scale (`Task.value_range` for scores,
`Task.classes` for classes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ANALYSES: dict[str, Callable] = {}


@dataclass
class Section:
    """What one analysis of one task gives: numbers (for analysis.json), tables (title,
    header, rows) and figure files."""
    numbers: object = None
    tables: list[tuple[str, list, list]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def analysis(name: str):
    """Registers `function(task, labels, predictions, folder, title) -> Section`."""
    def register(function):
        if name in ANALYSES:
            raise ValueError(f"two report analyses are named {name!r}")
        ANALYSES[name] = function
        return function
    return register


def file_stem(name: str) -> str:
    """A task or run name as a plain file name (no folders, no markup)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


# ---------------------------------------------------------------------- computations
def per_class(labels, predictions, num_classes: int) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    classes = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels.astype(int), predictions.astype(int), labels=classes, zero_division=0)
    return {"classes": classes, "precision": precision.tolist(), "recall": recall.tolist(),
            "f1": f1.tolist(), "support": support.tolist(),
            "confusion": confusion_matrix(labels.astype(int), predictions.astype(int),
                                          labels=classes).tolist()}


def near_misses(labels, predictions, num_classes: int) -> dict:
    """For ordered classes: the share of errors one class away, and, on an odd scale,
    accuracy with labels collapsed to 3 classes (below, at and above the middle: for SST
    0-1 negative, 2 neutral, 3-4 positive) and to 2 (gold-middle examples dropped as in
    SST-2; a middle prediction counts as wrong)."""
    labels, predictions = labels.astype(int), predictions.astype(int)
    errors = labels != predictions
    result = {
        "errors": int(errors.sum()),
        "one_class_away": float(np.mean(np.abs(labels - predictions)[errors] == 1))
        if errors.any() else 0.0,
        f"accuracy_{num_classes}": float(np.mean(~errors)),
    }
    if num_classes % 2 == 1:
        middle = num_classes // 2
        three = np.sign(np.arange(num_classes) - middle) + 1  # 0 below, 1 middle, 2 above
        polar = labels != middle
        result["accuracy_3"] = float(np.mean(three[labels] == three[predictions]))
        result["accuracy_2"] = float(np.mean(three[labels][polar] == three[predictions][polar]))
    return result


def error_bands(labels, predictions, low: float, high: float, count: int = 5) -> list[dict]:
    """Mean absolute error and bias of predicted scores in equal bands of the gold range."""
    rows = []
    edges = np.linspace(low, high, count + 1)
    for number, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
        last = number == count - 1
        inside = (labels >= start) & ((labels <= end) if last else (labels < end))
        error = predictions[inside] - labels[inside]
        rows.append({"band": f"{start:g}-{end:g}", "count": int(inside.sum()),
                     "mae": float(np.abs(error).mean()) if inside.any() else float("nan"),
                     "bias": float(error.mean()) if inside.any() else float("nan")})
    return rows


# ---------------------------------------------------------------------- registered analyses
@analysis("per_class")
def _per_class(task, labels, predictions, folder, title) -> Section:
    numbers = per_class(labels, predictions, len(task.classes))
    rows = [[c, numbers["precision"][c], numbers["recall"][c], numbers["f1"][c],
             numbers["support"][c]] for c in numbers["classes"]]
    return Section(numbers, [
        (f"{task.name}: per class", ["class", "precision", "recall", "f1", "support"], rows),
        (f"{task.name}: confusion (rows gold, columns predicted)", [""] + numbers["classes"],
         [[c] + row for c, row in enumerate(numbers["confusion"])])])


@analysis("near_misses")
def _near_misses(task, labels, predictions, folder, title) -> Section:
    numbers = near_misses(labels, predictions, len(task.classes))
    return Section(numbers, [(f"{task.name}: near misses", ["measure", "value"],
                              [[k, v] for k, v in numbers.items()])])


@analysis("bands")
def _bands(task, labels, predictions, folder, title) -> Section:
    low, high = task.value_range
    numbers = error_bands(labels, predictions, low, high)
    return Section(numbers, [(f"{task.name}: error by gold band", ["band", "count", "mae",
                                                                   "bias"],
                              [[b["band"], b["count"], b["mae"], b["bias"]] for b in numbers])])


@analysis("distribution")
def _distribution(task, labels, predictions, folder, title) -> Section:
    import matplotlib.pyplot as plt
    path = folder / f"{file_stem(task.name)}-distribution.png"
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if task.classes is not None:
        x = np.arange(len(task.classes))
        ax.bar(x - 0.2, [np.sum(labels == c) for c in task.classes], 0.4, label="gold")
        ax.bar(x + 0.2, [np.sum(predictions == c) for c in task.classes], 0.4,
               label="predicted")
        ax.set_xticks(x, [str(c) for c in task.classes])
        kind = "labels"
    else:
        low, high = task.value_range or (float(min(labels.min(), predictions.min())),
                                         float(max(labels.max(), predictions.max())))
        bins = np.linspace(low, high, 21)
        ax.hist(labels, bins, alpha=0.6, label="gold")
        ax.hist(predictions, bins, alpha=0.6, label="predicted")
        kind = "scores"
    ax.set_title(f"{title}: {task.name} dev {kind} vs predictions")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Section(figures=[path])


@analysis("scatter")
def _scatter(task, labels, predictions, folder, title) -> Section:
    import matplotlib.pyplot as plt
    path = folder / f"{file_stem(task.name)}-scatter.png"
    low, high = task.value_range
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(labels, predictions, s=4, alpha=0.4)
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel(f"gold {task.name}")
    ax.set_ylabel(f"predicted {task.name}")
    ax.set_title(f"{title}: {task.name} dev")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Section(figures=[path])
