"""Plotly figures for evaluation: the benchmark bars of a run report or a checkpoint, and the
three quality-versus-budget charts of a sweep (see mergehub/web/charts.py for how pages
embed a ``Chart``). Builders take the plain rows the selectors return and give ``None`` when
there is nothing to draw."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from mergehub.web.charts import PALETTE, Chart, _bytes_axis, _layout
from mergehub.web.formatting import human_bytes

ROLE_COLOURS = {"base": PALETTE["base"], "merge": PALETTE["planned"], "checkpoint": PALETTE["planned"]}
EXPERT_COLOURS = ["#e07b00", "#1f7a4d", "#b8336a", "#7a5cc6", "#2a9d8f", "#8a6d00", "#5c6b8a", "#c44536"]
TASK_COLOURS = ["#2458c6", "#e07b00", "#1f7a4d", "#b8336a", "#7a5cc6", "#2a9d8f", "#8a6d00", "#c44536"]


def _colour(row: dict[str, Any], expert_index: int) -> str:
    if row["role"] == "expert":
        return EXPERT_COLOURS[expert_index % len(EXPERT_COLOURS)]
    return ROLE_COLOURS.get(row["role"], PALETTE["planned"])


def benchmark_chart(tasks: list[str], rows: list[dict[str, Any]], *, chart_id: str = "chart-benchmark",
                    title: str = "Score per task") -> Chart | None:
    """Grouped bars: one group per task, one bar per model (``rows``: {"label", "role",
    "results": {task: EvalResult}}), with the 95% interval as error bars."""
    rows = [r for r in rows if any(r["results"].get(t) for t in tasks)]
    if not tasks or not rows:
        return None
    fig = go.Figure()
    experts = 0
    for row in rows:
        results = [row["results"].get(t) for t in tasks]
        scores = [r.score if r else None for r in results]
        fig.add_bar(
            name=row["label"], x=tasks, y=scores, marker_color=_colour(row, experts),
            error_y={"type": "data", "symmetric": False, "thickness": 1, "width": 3,
                     "array": [(r.ci_high - r.score) if r else 0 for r in results],
                     "arrayminus": [(r.score - r.ci_low) if r else 0 for r in results]},
            customdata=[[r.metric, r.n, r.ci_low, r.ci_high] if r else ["", 0, 0, 0] for r in results],
            hovertemplate=("%{fullData.name}<br>%{x}: %{y:.3f} %{customdata[0]}"
                           "<br>95% CI %{customdata[2]:.3f}–%{customdata[3]:.3f}, n=%{customdata[1]}<extra></extra>"))
        experts += row["role"] == "expert"
    higher = all(r.higher_is_better for row in rows for r in row["results"].values() if r)
    _layout(fig, barmode="group", xaxis={"type": "category"},
            yaxis={"title": "score", "rangemode": "tozero", **({"range": [0, 1.05]} if _unit_scores(rows) else {})})
    return Chart(chart_id, title,
                 "Score per task for each model, with 95% intervals"
                 + ("" if higher else " (perplexity: lower is better)") + ".", fig)


def _unit_scores(rows: list[dict[str, Any]]) -> bool:
    return all(0.0 <= r.score <= 1.0 for row in rows for r in row["results"].values() if r)


def _fractions(points: list[dict[str, Any]]) -> list[float]:
    """Each point's planned share of the full expert bytes (the x axis of every sweep chart)."""
    return [(p.get("planned_expert_bytes") or 0) / p["full_expert_bytes"] if p.get("full_expert_bytes") else 0.0
            for p in points]


def _budget_axis() -> dict[str, Any]:
    return {"title": "planned share of the full expert bytes", "tickformat": ".0%", "rangemode": "tozero"}


def sweep_score_chart(points: list[dict[str, Any]], tasks: list[str], references: list[dict[str, Any]]) -> Chart | None:
    """Score per task against budget, with the full-budget merge and the base as references."""
    scored = [p for p in points if p.get("scores")]
    if not scored or not tasks:
        return None
    xs = _fractions(scored)
    fig = go.Figure()
    for i, task in enumerate(tasks):
        colour = TASK_COLOURS[i % len(TASK_COLOURS)]
        fig.add_scatter(x=xs, y=[p["scores"].get(task) for p in scored], mode="lines+markers", name=task,
                        line={"color": colour}, customdata=[p["budget"] for p in scored],
                        hovertemplate="%{fullData.name}<br>budget %{customdata}: %{y:.3f}<extra></extra>")
    means = [sum(p["scores"].get(t, 0.0) for t in tasks) / len(tasks) for p in scored]
    fig.add_scatter(x=xs, y=means, mode="lines+markers", name="mean", line={"color": "#111", "width": 3},
                    hovertemplate="mean: %{y:.3f}<extra></extra>")
    full = next((p for p in scored if _is_full(p)), None)
    if full is not None:
        fig.add_hline(y=sum(full["scores"].get(t, 0.0) for t in tasks) / len(tasks), line_dash="dot",
                      annotation_text="full-budget mean", annotation_position="bottom right")
    base = next((r for r in references if r.get("role") == "base" and r.get("scores")), None)
    if base is not None:
        fig.add_hline(y=sum(base["scores"].get(t, 0.0) for t in tasks) / len(tasks), line_dash="dash",
                      line_color=PALETTE["base"], annotation_text="base mean", annotation_position="top left")
    _layout(fig, xaxis=_budget_axis(), yaxis={"title": "score", "rangemode": "tozero"})
    return Chart("chart-sweep-scores", "Score against budget",
                 "Each budget's merge, written and scored: per task and the mean, with the full-budget"
                 " merge and the base as references.", fig)


def _is_full(point: dict[str, Any]) -> bool:
    """The full-read merge: budget 1, or a plan that reads every expert byte."""
    if point.get("budget") in ("1", "1.0"):
        return True
    full = point.get("full_expert_bytes")
    return bool(full) and (point.get("planned_expert_bytes") or 0) >= full


def sweep_deviation_chart(points: list[dict[str, Any]]) -> Chart | None:
    """Exact deviation from the full-read merge, and the certificate bounding it, against budget."""
    rows = [p for p in points if p.get("deviation")]
    if not rows:
        return None
    xs = _fractions(rows)
    fig = go.Figure()
    fig.add_scatter(x=xs, y=[p["deviation"].get("update_relative") for p in rows], mode="lines+markers",
                    name="‖Δ_A − Δ_full‖ / ‖Δ_full‖", line={"color": PALETTE["planned"]},
                    customdata=[p["budget"] for p in rows],
                    hovertemplate="budget %{customdata}: %{y:.3g}<extra></extra>")
    fig.add_scatter(x=xs, y=[p["deviation"].get("weight_relative") for p in rows], mode="lines+markers",
                    name="relative to the weights", line={"color": PALETTE["read"]},
                    hovertemplate="%{y:.3g}<extra></extra>")
    _layout(fig, xaxis=_budget_axis(), yaxis={"title": "relative deviation", "rangemode": "tozero"})
    return Chart("chart-sweep-deviation", "Deviation from the full-read merge",
                 "Measured exactly for every budget in one pass over the data (the engine's sweep).", fig)


def sweep_bytes_chart(points: list[dict[str, Any]]) -> Chart | None:
    """Expert bytes planned (and, where merged, read from storage) against budget."""
    if not points:
        return None
    xs = _fractions(points)
    fig = go.Figure()
    planned = [p.get("planned_expert_bytes") or 0 for p in points]
    fig.add_scatter(x=xs, y=planned, mode="lines+markers", name="planned expert bytes",
                    line={"color": PALETTE["planned"]}, customdata=[human_bytes(v) for v in planned],
                    hovertemplate="%{customdata}<extra></extra>")
    if any(p.get("expert_bytes_read") is not None for p in points):
        read = [p.get("expert_bytes_read") for p in points]
        fig.add_scatter(x=xs, y=read, mode="markers", name="read from storage",
                        marker={"color": PALETTE["read"], "size": 9},
                        customdata=[human_bytes(v) for v in read], hovertemplate="%{customdata}<extra></extra>")
    _layout(fig, xaxis=_budget_axis(), yaxis=_bytes_axis())
    return Chart("chart-sweep-bytes", "Expert bytes against budget",
                 "What each budget's plan reads from the experts; storage reads are measured where the"
                 " budget's merge was written (a warm page cache makes them lower).", fig)
