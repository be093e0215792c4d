"""A study's report: its trials table and figures (optimisation history, each trial's
validation score per epoch, parameter importances) in one HTML page."""
from __future__ import annotations

import html
from pathlib import Path

from minbert.reports import html_image, html_page, html_table
from minbert.tuning.study import load_study, trials_table

# parameter importances from fewer complete trials than this are shown with a caveat
FEW_TRIALS = 10


def write_study_report(folder: str | Path, out: str | Path, storage: str | None = None) -> Path:
    """out/index.html (and out/trials.md) for the study in `folder`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots
    study = load_study(folder, storage)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trials_table(study)
    columns = [c for c in dict.fromkeys(k for row in rows for k in row)
               if c not in ("run_dir", "error")]
    cells = [["" if row.get(c) is None else row.get(c) for c in columns] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row)
              + " |" for row in cells]
    (out / "trials.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>",
             "<p>Trials are judged on the held-out validation split (overall score), never "
             "on dev.</p>", html_table(columns, cells, fmt="{:.4g}")]
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    figures = [("history", plots.plot_optimization_history, 1),
               ("epochs", plots.plot_intermediate_values, 1),
               ("importance", plots.plot_param_importances, 2)]
    for name, plot, needed in figures:
        if len(finished) < needed:
            parts.append(f"<p>{name}: needs {needed} complete trials</p>")
            continue
        try:
            axes = plot(study)
        except (RuntimeError, ValueError) as e:  # e.g. importances of a parameter never varied
            parts.append(f"<p>{name}: {html.escape(str(e))}</p>")
            continue
        path = out / f"{name}.png"
        axes.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        parts.append(html_image(path))
        if name == "importance" and len(finished) < FEW_TRIALS:
            parts.append(f"<p>Importances from {len(finished)} complete trials are a rough "
                         "guide only: with so few, they change from one trial to the next.</p>")
    (out / "index.html").write_text(html_page(f"study {study.study_name}", parts),
                                    encoding="utf-8")
    return out / "index.html"
