"""The report's tables and figures from any set of run folders.

Per run: dev metrics, per-class precision/recall/F1 and confusion matrices (scikit-learn),
the SST near-miss analysis, STS error by gold band, label-vs-prediction distributions,
an STS scatter and training curves. Across runs: the ablation table (Markdown and CSV)
beside the report's own Table 1. Everything lands in one folder with an index.html that
embeds its images, readable without a server.
"""
from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minbert.evaluation import overall_score
from minbert.tasks import Task

# "A SMARTer minBERT", Table 1 (dev; bert-base, T4 GPU): for reference only.
REPORT_TABLE_1 = [
    ("Baseline", 0.450, 0.739, 0.356),
    ("Random Sampling Baseline", 0.460, 0.650, 0.374),
    ("SMART", 0.482, 0.659, 0.363),
    ("PCGrad", 0.469, 0.721, 0.368),
    ("PCGrad + SMART", 0.486, 0.719, 0.351),
    ("Cross-Encoding", 0.480, 0.830, 0.838),
    ("Cross-Encoding + PCGrad + SMART 0", 0.460, 0.818, 0.845),
    ("Cross-Encoding + PCGrad + SMART 1", 0.459, 0.821, 0.847),
    ("Cross-Encoding + PCGrad + SMART 2", 0.500, 0.825, 0.843),
]


class ReportError(FileNotFoundError):
    """A run folder that lacks what a report needs; the message names the missing file."""


@dataclass
class RunData:
    name: str
    folder: Path
    tasks: dict[str, Task]
    epochs: list[dict]
    steps: list[dict]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)  # the dev examples scored


def read_prediction_file(path: Path) -> dict[str, float]:
    with open(path, encoding="utf-8") as fp:
        lines = fp.read().splitlines()[1:]
    out = {}
    for number, line in enumerate(lines, start=2):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise ReportError(f"{path}, line {number}: expected 'id , prediction'")
        out[parts[0]] = float(parts[1])
    return out


def load_run_outputs(folder: str | Path) -> RunData:
    """What a run produced (config, log, best model's dev predictions with the gold labels),
    for reports and comparisons; `minbert.runs.load_run` loads its model instead."""
    from minbert.runs import RunFolder, build_tasks
    run_folder = RunFolder(folder)
    folder = run_folder.path
    for needed in ("config.json", "log.jsonl"):
        if not (folder / needed).is_file():
            raise ReportError(f"{folder}: missing {needed}; is this a run folder written by "
                              "`minbert train`?")
    config = run_folder.read_config()
    tasks = build_tasks(config)
    records = [json.loads(line) for line in
               (folder / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    run = RunData(folder.name, folder, tasks, [r for r in records if r["type"] == "epoch"],
                  [r for r in records if r["type"] == "step"])
    for name, task in tasks.items():
        path = folder / "predictions" / f"{task.output_prefix}-dev-output.csv"
        if not path.is_file():
            raise ReportError(f"{folder}: missing predictions/{path.name}; run `minbert predict "
                              f"{folder} --splits dev` first")
        predicted = read_prediction_file(path)
        examples = task.read(Path(config.data.dir) / task.dev_file)
        keep = [i for i, example_id in enumerate(examples.ids) if example_id in predicted]
        run.ids[name] = [examples.ids[i] for i in keep]
        run.labels[name] = examples.labels[keep]
        run.predictions[name] = np.array([predicted[examples.ids[i]] for i in keep])
    return run


# ---------------------------------------------------------------------- analyses
def run_metrics(run: RunData) -> dict[str, float]:
    metrics = {name: run.tasks[name].metric(run.predictions[name], run.labels[name])
               for name in run.tasks}
    metrics["overall"] = overall_score(metrics, run.tasks)
    return metrics


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


# ---------------------------------------------------------------------- figures
def _figure_distribution(labels, predictions, classes, title, path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if classes is not None:
        x = np.arange(len(classes))
        ax.bar(x - 0.2, [np.sum(labels == c) for c in classes], 0.4, label="gold")
        ax.bar(x + 0.2, [np.sum(predictions == c) for c in classes], 0.4, label="predicted")
        ax.set_xticks(x, [str(c) for c in classes])
    else:
        bins = np.linspace(0, 5, 21)
        ax.hist(labels, bins, alpha=0.6, label="gold")
        ax.hist(predictions, bins, alpha=0.6, label="predicted")
    ax.set_title(title)
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _figure_scatter(labels, predictions, title, path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(labels, predictions, s=4, alpha=0.4)
    ax.plot([0, 5], [0, 5], color="grey", linewidth=1)
    ax.set_xlabel("gold similarity")
    ax.set_ylabel("predicted similarity")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _figure_curves(run: RunData, path):
    import matplotlib.pyplot as plt
    names = list(run.tasks)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    epochs = [r["epoch"] for r in run.epochs]
    chosen = "validation" if run.epochs and "validation" in run.epochs[0] else "dev"
    for ax, name in zip(axes, names):
        ax.plot(epochs, [r["train"].get(name, np.nan) for r in run.epochs], "o-", label="train")
        ax.plot(epochs, [r[chosen].get(name, np.nan) for r in run.epochs], "s-", label=chosen)
        ax.set_title(f"{name} {run.tasks[name].metric_name}")
        ax.set_xlabel("epoch")
        ax.legend()
    loss_ax = axes[-1]
    for name in names:
        points = [(r["updates"], r["loss"][name]) for r in run.steps if name in r["loss"]]
        if points:
            loss_ax.plot(*zip(*points), label=name)
    loss_ax.set_title("training loss")
    loss_ax.set_xlabel("update")
    loss_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------- analyses by name
def _per_class(run, name, task, labels, predictions, folder, result):
    result["per_class"][name] = per_class(labels, predictions, task.num_classes)


def _near_misses(run, name, task, labels, predictions, folder, result):
    result[f"{name}_near_misses"] = near_misses(labels, predictions, task.num_classes)


def _bands(run, name, task, labels, predictions, folder, result):
    result[f"{name}_bands"] = error_bands(labels, predictions, task.low, task.high)


def _distribution(run, name, task, labels, predictions, folder, result):
    figure = folder / f"{name}-distribution.png"
    kind = "labels" if task.classes is not None else "scores"
    _figure_distribution(labels, predictions, task.classes,
                         f"{run.name}: {name} dev {kind} vs predictions", figure)
    result["figures"].append(figure)


def _scatter(run, name, task, labels, predictions, folder, result):
    figure = folder / f"{name}-scatter.png"
    _figure_scatter(labels, predictions, f"{run.name}: {name} dev", figure)
    result["figures"].append(figure)


ANALYSES = {"per_class": _per_class, "near_misses": _near_misses, "bands": _bands,
            "distribution": _distribution, "scatter": _scatter}


# ---------------------------------------------------------------------- the report
def analyse_run(run: RunData, out: Path) -> dict:
    """Writes the run's figures under out/<run name>/ and returns its numbers."""
    folder = out / run.name
    folder.mkdir(parents=True, exist_ok=True)
    result = {"name": run.name, "metrics": run_metrics(run), "per_class": {}, "figures": []}
    for name, task in run.tasks.items():
        labels, predictions = run.labels[name], run.predictions[name]
        for analysis in task.analyses:  # the task says which apply
            ANALYSES[analysis](run, name, task, labels, predictions, folder, result)
    if run.epochs:
        curves = folder / "training-curves.png"
        _figure_curves(run, curves)
        result["figures"].append(curves)
    (folder / "analysis.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "figures"}, indent=2), encoding="utf-8")
    return result


BUILTIN_COLUMNS = ["sst", "quora", "sts"]  # the report's Table 1 is over these


def ablation_rows(results: list[dict], tasks: list[str]) -> list[list]:
    rows = [[r["name"], *[r["metrics"].get(t, float("nan")) for t in tasks],
             r["metrics"]["overall"]] for r in results]
    if tasks == BUILTIN_COLUMNS:
        for name, sst, quora, sts in REPORT_TABLE_1:
            rows.append([f"{name} (report, bert-base)", sst, quora, sts,
                         (sst + quora + (sts + 1) / 2) / 3])
    return rows


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run_outputs(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # two folders with one name: qualify by parent
        for r in runs:
            r.name = f"{r.folder.parent.name}-{r.folder.name}"
    results = [analyse_run(r, out) for r in runs]
    tasks = {}  # every run's tasks, in order of first appearance
    for run in runs:
        tasks.update({n: t for n, t in run.tasks.items() if n not in tasks})
    header = ["run", *[f"{n}_{t.metric_abbreviation}" for n, t in tasks.items()], "overall"]
    rows = ablation_rows(results, list(tasks))
    with open(out / "ablation.csv", "w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp)
        writer.writerow(header)
        writer.writerows([[r[0], *[f"{x:.4f}" for x in r[1:]]] for r in rows])
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join([r[0], *[f"{x:.3f}" for x in r[1:]]]) + " |" for r in rows]
    (out / "ablation.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    differences = run_differences(runs, out)
    (out / "index.html").write_text(_html(results, header, rows, differences),
                                    encoding="utf-8")
    return out / "index.html"


def run_differences(runs: list[RunData], out: Path) -> dict:
    """Each run against the first, per task and overall, with 95% paired-bootstrap
    intervals over the dev examples both scored (minbert.compare), into differences.md
    and a figure of the differences with their interval bars against zero. Runs scored
    on other examples or tasks than the first are left out and named."""
    from minbert.compare import compare_predictions
    reference, compared, skipped = runs[0], {}, []
    for run in runs[1:]:
        if list(run.tasks) != list(reference.tasks) or run.ids != reference.ids:
            skipped.append(run.name)
            continue
        compared[run.name] = compare_predictions(run.tasks, run.labels, run.predictions,
                                                 reference.predictions)
    if not compared:
        return {"reference": reference.name, "rows": {}, "skipped": skipped, "figure": None}
    lines = [f"Each run minus {reference.name} (95% paired-bootstrap interval, 10,000 "
             "resamples of the dev examples)", "",
             "| run | measure | difference | 95% interval | verdict |", "|---|---|---|---|---|"]
    for name, rows in compared.items():
        lines += [f"| {name} | {r.name} | {r.difference:+.4f} | [{r.low:+.4f}, {r.high:+.4f}] "
                  f"| {r.verdict} |" for r in rows]
    if skipped:
        lines += ["", f"Not compared (other dev examples or tasks): {', '.join(skipped)}"]
    (out / "differences.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    figure = out / "differences.png"
    _figure_differences(compared, reference.name, figure)
    return {"reference": reference.name, "rows": compared, "skipped": skipped,
            "figure": figure}


def _figure_differences(compared: dict, reference: str, path: Path):
    import matplotlib.pyplot as plt
    measures = [r.name for r in next(iter(compared.values()))]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures),
                                                         0.6 * len(compared) + 1.6))
    for ax, measure in zip(np.atleast_1d(axes), measures):
        for y, (name, rows) in enumerate(compared.items()):
            r = next(x for x in rows if x.name == measure)
            ax.errorbar(r.difference, y, xerr=[[r.difference - r.low], [r.high - r.difference]],
                        fmt="o", capsize=3)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_yticks(range(len(compared)), list(compared) if measure == measures[0] else [])
        ax.set_title(measure)
    fig.suptitle(f"difference from {reference} (95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(header, rows, fmt="{:.3f}") -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = ""
    for row in rows:
        body += "<tr>" + "".join(
            f"<td>{fmt.format(x) if isinstance(x, float) else html.escape(str(x))}</td>"
            for x in row) + "</tr>"
    return f"<table><tr>{cells}</tr>{body}</table>"


def _html(results, header, rows, differences: dict | None = None) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>minbert report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}img{max-width:100%}</style>",
             "<h1>minbert report</h1><h2>Ablation (dev)</h2>",
             "<p>Rows marked <i>(report, bert-base)</i> are the numbers of Table 1 of "
             "\"A SMARTer minBERT\", for reference; they were not measured here. Quora "
             "numbers of all-MiniLM-L6-v2 runs are not clean transfer results: that model "
             "was pre-trained on pairs that include Quora duplicates.</p>",
             _table(header, rows)]
    if differences and differences["rows"]:
        parts.append(f"<h2>Differences from {html.escape(differences['reference'])}</h2>"
                     "<p>95% paired-bootstrap intervals over the same dev examples; an "
                     "interval that holds zero is not distinguishable here.</p>")
        parts.append(_table(["run", "measure", "difference", "low", "high", "verdict"],
                            [[name, r.name, r.difference, r.low, r.high, r.verdict]
                             for name, rows in differences["rows"].items() for r in rows],
                            fmt="{:+.4f}"))
        data = base64.b64encode(differences["figure"].read_bytes()).decode("ascii")
        parts.append(f"<p><img alt='differences' src='data:image/png;base64,{data}'></p>")
    for result in results:
        parts.append(f"<h2>{html.escape(result['name'])}</h2>")
        parts.append(_table(["task", "metric"], [[k, v] for k, v in result["metrics"].items()]))
        for task, numbers in result["per_class"].items():
            parts.append(f"<h3>{task}: per class</h3>")
            parts.append(_table(["class", "precision", "recall", "f1", "support"],
                                [[c, numbers["precision"][c], numbers["recall"][c],
                                  numbers["f1"][c], numbers["support"][c]]
                                 for c in numbers["classes"]]))
            parts.append(f"<h3>{task}: confusion (rows gold, columns predicted)</h3>")
            parts.append(_table([""] + numbers["classes"],
                                [[c] + row for c, row in enumerate(numbers["confusion"])]))
        for key in [k for k in result if k.endswith("_near_misses")]:
            parts.append(f"<h3>{key[:-len('_near_misses')]}: near misses</h3>")
            parts.append(_table(["measure", "value"], [[k, v] for k, v in result[key].items()]))
        for key in [k for k in result if k.endswith("_bands")]:
            parts.append(f"<h3>{key[:-6]}: error by gold band</h3>")
            parts.append(_table(["band", "count", "mae", "bias"],
                                [[b["band"], b["count"], b["mae"], b["bias"]]
                                 for b in result[key]]))
        for figure in result["figures"]:
            data = base64.b64encode(Path(figure).read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(figure.name)}' "
                         f"src='data:image/png;base64,{data}'></p>")
    return "\n".join(parts)
