"""The compare page's chart: the evaluation scores of several runs overlaid (see
mergehub/ui/charts.py for how pages embed a ``Chart``)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from mergehub.evaluation.charts import TASK_COLOURS
from mergehub.ui.charts import Chart, apply_layout


def compare_scores_chart(tasks: list[str], runs: list[dict[str, Any]]) -> Chart | None:
    """Grouped bars: one group per task, one bar (one colour) per run, in the order compared,
    with the 95% interval as error bars. ``runs``: {"label", "results": {task: EvalResult}}
    (selectors.compare_runs). None when no run has a score."""
    runs = [r for r in runs if any(r["results"].get(t) for t in tasks)]
    if not tasks or not runs:
        return None
    fig = go.Figure()
    for i, run in enumerate(runs):
        results = [run["results"].get(t) for t in tasks]
        fig.add_bar(
            name=run["label"], x=tasks, y=[r.score if r else None for r in results],
            marker_color=TASK_COLOURS[i % len(TASK_COLOURS)],
            error_y={"type": "data", "symmetric": False, "thickness": 1, "width": 3,
                     "array": [(r.ci_high - r.score) if r else 0 for r in results],
                     "arrayminus": [(r.score - r.ci_low) if r else 0 for r in results]},
            customdata=[[r.metric, r.n, r.ci_low, r.ci_high] if r else ["", 0, 0, 0] for r in results],
            hovertemplate=("%{fullData.name}<br>%{x}: %{y:.3f} %{customdata[0]}"
                           "<br>95% CI %{customdata[2]:.3f}–%{customdata[3]:.3f}, n=%{customdata[1]}<extra></extra>"))
    scored = [r for run in runs for r in run["results"].values() if r]
    unit = all(0.0 <= r.score <= 1.0 for r in scored)
    higher = all(r.higher_is_better for r in scored)
    apply_layout(fig, barmode="group", xaxis={"type": "category"},
            yaxis={"title": "score", "rangemode": "tozero", **({"range": [0, 1.05]} if unit else {})})
    return Chart("chart-compare-scores", "Score per task",
                 "Each run's merge scored on its newest evaluation, one colour per run, with 95% intervals"
                 + ("" if higher else " (perplexity: lower is better)") + ".", fig)
