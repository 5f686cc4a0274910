"""Plotly figures for evaluation: the benchmark bars of a run report or a checkpoint, and the
three quality-versus-budget charts of a sweep (see mergehub/ui/charts.py for how pages
embed a ``Chart``). Builders take the plain rows the selectors return and give ``None`` when
there is nothing to draw. A sweep whose points come in two modes (selectors.MODE_LABELS: with
low-rank sketches, and exact blocks only) gets one curve per mode on the same axes."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from mergehub.ui.charts import PALETTE, Chart, apply_layout, bytes_axis
from mergehub.ui.formatting import human_bytes

from .selectors import BLOCKS, MODE_LABELS, SKETCH

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
    apply_layout(fig, barmode="group", xaxis={"type": "category"},
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


# The two curves a sweep with sketches compares on the same axes: its colour and dash per mode.
MODE_STYLES = {SKETCH: {"color": PALETTE["sketch"], "dash": "solid"}, BLOCKS: {"color": PALETTE["planned"], "dash": "dash"}}


def _by_mode(points: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The points per mode ("sketch" first; a point without one: "blocks"), each group in the
    order of its x (planned share), so that its curve runs left to right."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault(point.get("mode") or BLOCKS, []).append(point)
    ordered = []
    for mode in [m for m in MODE_LABELS if m in groups] + [m for m in groups if m not in MODE_LABELS]:
        rows = groups[mode]
        ordered.append((mode, [p for _, p in sorted(zip(_fractions(rows), rows), key=lambda pair: pair[0])]))
    return ordered


def _height(compare: bool) -> int:
    """Two modes double the legend: a taller chart keeps the plot itself as large."""
    return 440 if compare else 320


def _mode_label(mode: str) -> str:
    return MODE_LABELS.get(mode, mode)


def _mean(point: dict[str, Any], tasks: list[str]) -> float:
    return sum(point["scores"].get(t, 0.0) for t in tasks) / len(tasks)


def sweep_score_chart(points: list[dict[str, Any]], tasks: list[str], references: list[dict[str, Any]]) -> Chart | None:
    """Score per task against budget, with the full-budget merge and the base as references.
    With points of both modes: the mean score of "sketch + blocks" and of "blocks only" as two
    curves on the same axes (each task's curves one legend click away)."""
    scored = [p for p in points if p.get("scores")]
    if not scored or not tasks:
        return None
    groups = _by_mode(scored)
    compare = len(groups) > 1
    fig = go.Figure()
    for mode, rows in groups:
        xs, label, style = _fractions(rows), _mode_label(mode), MODE_STYLES.get(mode, MODE_STYLES[BLOCKS])
        for i, task in enumerate(tasks):
            fig.add_scatter(x=xs, y=[p["scores"].get(task) for p in rows], mode="lines+markers",
                            name=f"{task} · {label}" if compare else task, legendgroup=task,
                            visible="legendonly" if compare else True,
                            line={"color": TASK_COLOURS[i % len(TASK_COLOURS)], "dash": style["dash"] if compare else "solid"},
                            customdata=[p["budget"] for p in rows],
                            hovertemplate="%{fullData.name}<br>budget %{customdata}: %{y:.3f}<extra></extra>")
        fig.add_scatter(x=xs, y=[_mean(p, tasks) for p in rows], mode="lines+markers",
                        name=label if compare else "mean",
                        line={"color": style["color"] if compare else "#111", "width": 3, "dash": style["dash"]},
                        customdata=[p["budget"] for p in rows],
                        hovertemplate="%{fullData.name}<br>budget %{customdata}: mean %{y:.3f}<extra></extra>")
    full = next((p for p in scored if _is_full(p)), None)
    if full is not None:
        fig.add_hline(y=_mean(full, tasks), line_dash="dot",
                      annotation_text="full-budget mean", annotation_position="bottom right")
    base = next((r for r in references if r.get("role") == "base" and r.get("scores")), None)
    if base is not None:
        fig.add_hline(y=sum(base["scores"].get(t, 0.0) for t in tasks) / len(tasks), line_dash="dash",
                      line_color=PALETTE["base"], annotation_text="base mean", annotation_position="top left")
    apply_layout(fig, xaxis=_budget_axis(), yaxis={"title": "score", "rangemode": "tozero"}, height=_height(compare))
    if compare:
        caption = ("Each budget's merge, written and scored, with low-rank sketches (sketch + blocks) and with"
                   " exact blocks only: the mean over the tasks (click a task in the legend for its own curves),"
                   " with the full-budget merge and the base as references.")
    else:
        caption = ("Each budget's merge, written and scored: per task and the mean, with the full-budget"
                   " merge and the base as references.")
    return Chart("chart-sweep-scores", "Score against budget", caption, fig)


def _is_full(point: dict[str, Any]) -> bool:
    """The full-read merge: budget 1, or a plan that reads every expert byte."""
    if point.get("budget") in ("1", "1.0"):
        return True
    full = point.get("full_expert_bytes")
    return bool(full) and (point.get("planned_expert_bytes") or 0) >= full


def sweep_deviation_chart(points: list[dict[str, Any]]) -> Chart | None:
    """Exact deviation from the full-read merge against budget; with both modes, one curve
    each for "sketch + blocks" and "blocks only"."""
    rows = [p for p in points if p.get("deviation")]
    if not rows:
        return None
    groups = _by_mode(rows)
    compare = len(groups) > 1
    fig = go.Figure()
    for mode, group in groups:
        xs, label, style = _fractions(group), _mode_label(mode), MODE_STYLES.get(mode, MODE_STYLES[BLOCKS])
        fig.add_scatter(x=xs, y=[p["deviation"].get("update_relative") for p in group], mode="lines+markers",
                        name=label if compare else "‖Δ_A − Δ_full‖ / ‖Δ_full‖",
                        line={"color": style["color"] if compare else PALETTE["planned"], "dash": style["dash"]},
                        customdata=[p["budget"] for p in group],
                        hovertemplate="%{fullData.name}<br>budget %{customdata}: %{y:.3g}<extra></extra>")
        fig.add_scatter(x=xs, y=[p["deviation"].get("weight_relative") for p in group], mode="lines+markers",
                        name=f"{label}: relative to the weights" if compare else "relative to the weights",
                        visible="legendonly" if compare else True,
                        line={"color": PALETTE["read"], "dash": style["dash"] if compare else "solid"},
                        hovertemplate="%{fullData.name}: %{y:.3g}<extra></extra>")
    apply_layout(fig, xaxis=_budget_axis(), yaxis={"title": "relative deviation", "rangemode": "tozero"}, height=_height(compare))
    caption = "Measured exactly for every budget in one pass over the data (the engine's sweep)."
    if compare:
        caption = ("‖Δ_A − Δ_full‖ / ‖Δ_full‖ with low-rank sketches (sketch + blocks) and with exact blocks only, "
                   + caption[0].lower() + caption[1:])
    return Chart("chart-sweep-deviation", "Deviation from the full-read merge", caption, fig)


def sweep_bytes_chart(points: list[dict[str, Any]]) -> Chart | None:
    """Expert bytes planned (and, where merged, read from storage) against budget; with both
    modes, how the "sketch + blocks" plans split their bytes between sketches and exact blocks
    (stacked), next to the "blocks only" plans."""
    if not points:
        return None
    groups = _by_mode(points)
    compare = len(groups) > 1
    fig = go.Figure()
    top = 0
    for mode, rows in groups:
        xs, label, style = _fractions(rows), _mode_label(mode), MODE_STYLES.get(mode, MODE_STYLES[BLOCKS])
        if mode == SKETCH:
            stacked = [_block_or_sketch_bytes(p, "sketch_bytes") + _block_or_sketch_bytes(p, "block_bytes")
                       for p in rows]
            top = max([top, *stacked])
            for part, key, colour in (("sketches", "sketch_bytes", PALETTE["sketch"]),
                                      ("exact blocks", "block_bytes", PALETTE["planned"])):
                values = [_block_or_sketch_bytes(p, key) for p in rows]
                fig.add_scatter(x=xs, y=values, mode="lines+markers", name=f"{label}: {part}",
                                stackgroup="sketch", line={"color": colour},
                                customdata=[human_bytes(v) for v in values],
                                hovertemplate="%{fullData.name}: %{customdata}<extra></extra>")
        else:
            planned = [p.get("planned_expert_bytes") or 0 for p in rows]
            top = max([top, *planned])
            fig.add_scatter(x=xs, y=planned, mode="lines+markers",
                            name=f"{label}: exact blocks" if compare else "planned expert bytes",
                            line={"color": PALETTE["planned"] if not compare else "#111", "dash": style["dash"]},
                            customdata=[human_bytes(v) for v in planned],
                            hovertemplate="%{fullData.name}: %{customdata}<extra></extra>")
        if any(p.get("expert_bytes_read") is not None for p in rows):
            read = [_storage_read(p) for p in rows]
            top = max([top, *(r for r in read if r is not None)])
            fig.add_scatter(x=xs, y=read, mode="markers",
                            name=f"{label}: read from storage" if compare else "read from storage",
                            marker={"color": PALETTE["read"], "size": 9,
                                    "symbol": "diamond" if mode == SKETCH and compare else "circle"},
                            customdata=[human_bytes(v) for v in read],
                            hovertemplate="%{fullData.name}: %{customdata}<extra></extra>")
    apply_layout(fig, xaxis=_budget_axis(), yaxis=bytes_axis(top), height=_height(compare))
    measured = ("storage reads are measured where the budget's merge was written (a warm page cache makes"
                " them lower).")
    if compare:
        caption = ("What each budget's plan reads: with sketches, split between the low-rank sketches (from the"
                   " catalog) and exact blocks, next to the plan of exact blocks only; " + measured)
    else:
        caption = "What each budget's plan reads from the experts; " + measured
    return Chart("chart-sweep-bytes", "Expert bytes against budget", caption, fig)


def _block_or_sketch_bytes(point: dict[str, Any], key: str) -> int:
    """A point's sketch bytes, or its exact-block bytes (planned less sketches where absent)."""
    sketches = int(point.get("sketch_bytes") or 0)
    if key == "sketch_bytes":
        return sketches
    value = point.get("block_bytes")
    return int(value) if value is not None else max(0, int(point.get("planned_expert_bytes") or 0) - sketches)


def _storage_read(point: dict[str, Any]) -> int | None:
    """Expert-derived bytes storage served for a point's merge: exact blocks and sketches."""
    if point.get("expert_bytes_read") is None:
        return None
    return int(point["expert_bytes_read"]) + int(point.get("sketch_bytes_read") or 0)
