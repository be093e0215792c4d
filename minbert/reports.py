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
from pathlib import Path

import numpy as np

from minbert.analyses import ANALYSES, file_stem
from minbert.compare import compare_predictions
from minbert.evaluation import overall_score
from minbert.outputs import RunOutputs, read_outputs

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


def run_metrics(run: RunOutputs) -> dict[str, float]:
    metrics = {name: run.tasks[name].metric(run.predictions[name], run.labels[name])
               for name in run.tasks}
    metrics["overall"] = overall_score(metrics, run.tasks)
    return metrics


def _figure_curves(run: RunOutputs, path):
    """Each task's train and selection-split metric by epoch (whole-number ticks), and the
    training loss by update where the log has step records."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    names = list(run.tasks)
    has_loss = any(r.get("loss") for r in run.steps)
    panels = len(names) + has_loss
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    axes = axes[0]
    epochs = [r["epoch"] for r in run.epochs]
    chosen = "validation" if run.epochs and "validation" in run.epochs[0] else "dev"
    for ax, name in zip(axes, names):
        ax.plot(epochs, [r["train"].get(name, np.nan) for r in run.epochs], "o-", label="train")
        ax.plot(epochs, [r[chosen].get(name, np.nan) for r in run.epochs], "s-", label=chosen)
        ax.set_title(f"{name} {run.tasks[name].metric_name}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    if has_loss:
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


def differences_note(runs: list[RunOutputs]) -> str:
    """A sentence saying how the runs differ in tasks or dev examples ("" when they do
    not): their numbers side by side are then not on the same footing."""
    first = runs[0]
    other_tasks = [r.name for r in runs[1:] if list(r.tasks) != list(first.tasks)]
    other_examples = [r.name for r in runs[1:] if list(r.tasks) == list(first.tasks)
                      and r.ids != first.ids]
    parts = []
    if other_tasks:
        parts.append(f"{', '.join(other_tasks)} have other tasks than {first.name} (an empty "
                     "cell: a task the run does not have; overall is over each run's own tasks)")
    if other_examples:
        parts.append(f"{', '.join(other_examples)} were scored on other dev examples than "
                     f"{first.name} (another dev_limit or dev file)")
    return "; ".join(parts)


# ---------------------------------------------------------------------- the report
def analyse_run(run: RunOutputs, out: Path) -> dict:
    """Writes the run's figures under out/<run name>/ and returns its numbers and sections
    (each task's analyses, as the task names them)."""
    folder = out / file_stem(run.name)
    folder.mkdir(parents=True, exist_ok=True)
    result = {"name": run.name, "metrics": run_metrics(run), "sections": [], "figures": []}
    for name, task in run.tasks.items():
        for kind in task.analyses:
            section = ANALYSES[kind](task, run.labels[name], run.predictions[name], folder,
                                     run.name)
            if section.numbers is not None:
                result.setdefault(kind, {})[name] = section.numbers
            result["sections"].append(section)
    if run.epochs:
        curves = folder / "training-curves.png"
        _figure_curves(run, curves)
        result["figures"].append(curves)
    (folder / "analysis.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k not in ("figures", "sections")}, indent=2),
        encoding="utf-8")
    return result


BUILTIN_COLUMNS = ["sst", "quora", "sts"]  # the report's Table 1 is over these


def ablation_rows(results: list[dict], tasks: dict) -> list[list]:
    """One row per run (its metric per task, then overall); over the built-in tasks, the
    report's Table 1 below them, its overall computed as the leaderboard does."""
    rows = [[r["name"], *[r["metrics"].get(t, float("nan")) for t in tasks],
             r["metrics"]["overall"]] for r in results]
    if list(tasks) == BUILTIN_COLUMNS:
        for name, *metrics in REPORT_TABLE_1:
            rows.append([f"{name} (report, bert-base)", *metrics,
                         overall_score(dict(zip(BUILTIN_COLUMNS, metrics)), tasks)])
    return rows


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_outputs(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # two folders with one name: qualify by parent
        for r in runs:
            r.name = f"{r.folder.parent.name}-{r.folder.name}"
    seen: dict[str, int] = {}
    for r in runs:  # still the same (g1/x/run, g2/x/run): numbered, so no file is shared
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}-{seen[r.name]}"
    results = [analyse_run(r, out) for r in runs]
    tasks = {}  # every run's tasks, in order of first appearance
    for run in runs:
        tasks.update({n: t for n, t in run.tasks.items() if n not in tasks})
    header = ["run", *[f"{n}_{t.metric_abbreviation}" for n, t in tasks.items()], "overall"]
    rows = ablation_rows(results, tasks)

    def cell(x, digits):
        return "" if isinstance(x, float) and np.isnan(x) else f"{x:.{digits}f}"
    with open(out / "ablation.csv", "w", newline="", encoding="utf-8") as fp:
        writer = csv.writer(fp)
        writer.writerow(header)
        writer.writerows([[r[0], *[cell(x, 4) for x in r[1:]]] for r in rows])
    note = differences_note(runs)
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join([r[0], *[cell(x, 3) for x in r[1:]]]) + " |" for r in rows]
    markdown += ["", f"Note: {note}."] if note else []
    (out / "ablation.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    differences = run_differences(runs, out)
    table = [[r[0], *[cell(x, 3) for x in r[1:]]] for r in rows]
    (out / "index.html").write_text(_html(results, header, table, differences, note),
                                    encoding="utf-8")
    return out / "index.html"


def run_differences(runs: list[RunOutputs], out: Path) -> dict:
    """Each run against the first, per task and overall, with 95% paired-bootstrap
    intervals over the dev examples both scored (minbert.compare), into differences.md
    and a figure of the differences with their interval bars against zero. Runs scored
    on other examples or tasks than the first are left out and named."""
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


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}"
         "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;"
         "padding:3px 8px;text-align:right}img{max-width:100%}")


def html_page(title: str, parts: list[str]) -> str:
    """One self-contained HTML page (the report's and the tuner's)."""
    return "\n".join([f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}"
                      f"</title><style>{STYLE}</style>", *parts])


def html_table(header, rows, fmt="{:.3f}") -> str:
    """An HTML table; floats formatted with `fmt`, everything else escaped text."""
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = ""
    for row in rows:
        body += "<tr>" + "".join(
            f"<td>{fmt.format(x) if isinstance(x, float) else html.escape(str(x))}</td>"
            for x in row) + "</tr>"
    return f"<table><tr>{cells}</tr>{body}</table>"


def html_image(path: Path) -> str:
    """A PNG embedded in the page (readable without its file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<p><img alt='{html.escape(Path(path).name)}' src='data:image/png;base64,{data}'></p>"


def _html(results, header, rows, differences: dict | None = None, note: str = "") -> str:
    parts = ["<h1>minbert report</h1><h2>Ablation (dev)</h2>",
             "<p>Rows marked <i>(report, bert-base)</i> are the numbers of Table 1 of "
             "\"A SMARTer minBERT\", for reference; they were not measured here. Quora "
             "numbers of all-MiniLM-L6-v2 runs are not clean transfer results: that model "
             "was pre-trained on pairs that include Quora duplicates.</p>",
             html_table(header, rows)]
    if note:
        parts.append(f"<p><b>Note:</b> {html.escape(note)}.</p>")
    if differences and differences["rows"]:
        parts.append(f"<h2>Differences from {html.escape(differences['reference'])}</h2>"
                     "<p>95% paired-bootstrap intervals over the same dev examples; an "
                     "interval that holds zero is not distinguishable here.</p>")
        parts.append(html_table(["run", "measure", "difference", "low", "high", "verdict"],
                                [[name, r.name, r.difference, r.low, r.high, r.verdict]
                                 for name, rows in differences["rows"].items() for r in rows],
                                fmt="{:+.4f}"))
        parts.append(html_image(differences["figure"]))
    for result in results:
        parts.append(f"<h2>{html.escape(result['name'])}</h2>")
        parts.append(html_table(["task", "metric"],
                                [[k, v] for k, v in result["metrics"].items()]))
        for section in result["sections"]:
            for title, table_header, table_rows in section.tables:
                parts.append(f"<h3>{html.escape(title)}</h3>")
                parts.append(html_table(table_header, table_rows))
            parts.extend(html_image(figure) for figure in section.figures)
        parts.extend(html_image(figure) for figure in result["figures"])
    return html_page("minbert report", parts)
