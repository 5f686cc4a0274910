"""The run report's charts (the order a finished run's page shows them: run_report_charts),
drawn from a run's ``metrics`` as the engine returned them. How a page embeds a ``Chart``:
mergehub/ui/charts.py."""

from __future__ import annotations

from typing import Any, Iterable

import plotly.graph_objects as go

from mergehub.ui.charts import PALETTE, Chart, apply_layout, bytes_axis
from mergehub.ui.formatting import human_bytes, human_seconds

from .figures import plan_savings, sketch_split

TIME_STAGES = ("plan", "read", "compute", "write")
TIME_COLOURS = {"plan": "#7a5cc6", "read": "#e07b00", "compute": "#2458c6", "write": "#1f7a4d"}


def _int(value: Any) -> int:
    return int(value or 0)


def expert_bytes_chart(per_expert: Iterable[dict[str, Any]]) -> Chart | None:
    """Per expert: full bytes, bytes the plan chose and (when measured) bytes read from storage."""
    rows = list(per_expert or [])
    if not rows:
        return None
    names = [str(r.get("name") or f"expert {i + 1}") for i, r in enumerate(rows)]
    series = [("Full", "full_bytes", PALETTE["full"]), ("Planned", "planned_bytes", PALETTE["planned"])]
    if any(r.get("sketch_bytes") for r in rows):
        series.append(("Planned sketches", "sketch_bytes", PALETTE["sketch"]))
    if any("read_bytes" in r for r in rows):
        series.append(("Read from storage", "read_bytes", PALETTE["read"]))
    fig = go.Figure()
    top = 0
    for label, key, colour in series:
        values = [_int(r.get(key)) for r in rows]
        top = max([top, *values])
        fig.add_bar(name=label, x=names, y=values, marker_color=colour,
                    customdata=[human_bytes(v) for v in values],
                    hovertemplate="%{x}<br>" + label + ": %{customdata}<extra></extra>")
    apply_layout(fig, barmode="group", yaxis=bytes_axis(top), xaxis={"type": "category"})
    return Chart("chart-expert-bytes", "Expert bytes: planned vs full",
                 "What each expert would cost to read in full, what the plan chose under the budget"
                 " (low-rank sketches included, where it uses them) and, when measured, what was read"
                 " from storage.", fig)


def io_chart(metrics: dict[str, Any]) -> Chart | None:
    """Bytes moved by the run: planned expert reads next to what storage actually served."""
    if not metrics or "planned_expert_bytes" not in metrics:
        return None
    sketches = sketch_split(metrics)
    if sketches:  # the plan's bytes in its two kinds, each next to what storage served of it
        planned = [("Planned exact blocks", sketches["blocks"], PALETTE["planned"]),
                   ("Planned sketches", sketches["sketches"], PALETTE["sketch"]),
                   ("Expert bytes read from storage", metrics.get("expert_bytes_read"), PALETTE["read"]),
                   ("Sketch bytes read from storage", sketches["read"], PALETTE["read"])]
    else:
        planned = [("Planned expert reads", metrics.get("planned_expert_bytes"), PALETTE["planned"]),
                   ("Expert bytes read from storage", metrics.get("expert_bytes_read"), PALETTE["read"])]
    bars = [
        ("Full expert bytes", metrics.get("full_expert_bytes"), PALETTE["full"]),
        ("Budget", metrics.get("budget_bytes"), PALETTE["skipped"]),
        *planned,
        ("Base bytes read from storage", metrics.get("base_bytes_read"), PALETTE["base"]),
        ("Bytes written", metrics.get("bytes_written"), PALETTE["written"]),
    ]
    bars = [(label, _int(v), colour) for label, v, colour in bars if v is not None]
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", marker_color=[b[2] for b in bars],
        customdata=[human_bytes(v) for v in values], text=[human_bytes(v) for v in values],
        textposition="outside", cliponaxis=False, hovertemplate="%{y}: %{customdata}<extra></extra>"))
    # Room on the right for the labels printed outside the bars (zero bars included).
    top = 1.25 * max(values + [1])
    axis = bytes_axis(top) | {"range": [0, top]}
    apply_layout(fig, xaxis=axis, yaxis={"autorange": "reversed", "type": "category"},
            margin={"l": 210, "r": 20, "t": 10, "b": 40}, showlegend=False)
    return Chart("chart-io", "Bytes read from storage vs planned",
                 "Storage reads are measured by the kernel (/proc/self/io read_bytes); pages already"
                 " in the page cache cost no storage read, so they can be below the plan.", fig)


def savings_chart(metrics: dict[str, Any]) -> Chart | None:
    """Share of the full expert bytes the plan read vs skipped."""
    savings = plan_savings(metrics)
    if not savings or not savings["full"]:
        return None
    full, skipped = savings["full"], savings["skipped"]
    planned = full - skipped
    sketches = sketch_split(metrics)
    if sketches:
        slices = [("Exact blocks read (planned)", min(sketches["blocks"], planned), PALETTE["planned"]),
                  ("Sketches read (planned)", planned - min(sketches["blocks"], planned), PALETTE["sketch"])]
    else:
        slices = [("Expert bytes read (planned)", planned, PALETTE["planned"])]
    slices.append(("Expert bytes skipped", skipped, PALETTE["skipped"]))
    fig = go.Figure(go.Pie(
        labels=[s[0] for s in slices], values=[s[1] for s in slices],
        hole=0.6, sort=False, marker={"colors": [s[2] for s in slices]},
        customdata=[human_bytes(s[1]) for s in slices],
        hovertemplate="%{label}: %{customdata} (%{percent})<extra></extra>", textinfo="percent"))
    apply_layout(fig, showlegend=True,
            annotations=[{"text": f"{skipped / full:.1%}<br>saved", "showarrow": False,
                          "font": {"size": 18}}])
    return Chart("chart-savings", "Savings",
                 f"{human_bytes(skipped)} of {human_bytes(full)} expert bytes were never read.", fig)


def time_split_chart(seconds: dict[str, Any]) -> Chart | None:
    """Wall time split into plan / read / compute / write (one stacked bar)."""
    if not seconds or not any(seconds.get(s) for s in TIME_STAGES):
        return None
    fig = go.Figure()
    for stage in TIME_STAGES:
        value = float(seconds.get(stage) or 0.0)
        fig.add_bar(name=stage, x=[value], y=["run"], orientation="h",
                    marker_color=TIME_COLOURS[stage], customdata=[human_seconds(value)],
                    hovertemplate=stage + ": %{customdata}<extra></extra>")
    apply_layout(fig, height=190, barmode="stack", xaxis={"ticksuffix": " s", "rangemode": "tozero"},
            legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0,
                    "traceorder": "normal"},
            yaxis={"showticklabels": False}, margin={"l": 20, "r": 20, "t": 30, "b": 40})
    caption = f"Total {human_seconds(float(seconds.get('total') or 0.0))}."
    if seconds.get("index"):
        caption += (f" Indexing the experts took {human_seconds(float(seconds['index']))},"
                    " paid once and reused by later merges.")
    return Chart("chart-time", "Time split", caption, fig)


def deviation_chart(deviation: dict[str, Any] | None) -> Chart | None:
    """Per layer: ‖Δ_A − Δ_full‖ / ‖Δ_full‖ against the full-read merge."""
    per_layer = (deviation or {}).get("per_layer") or {}
    if not per_layer:
        return None
    layers = [str(k) for k in per_layer]
    values = [float(v) for v in per_layer.values()]
    fig = go.Figure(go.Bar(x=layers, y=values, marker_color=PALETTE["planned"],
                           hovertemplate="layer %{x}: %{y:.3g}<extra></extra>"))
    apply_layout(fig, xaxis={"type": "category", "title": "layer"},
            yaxis={"title": "relative to update", "rangemode": "tozero", "tickformat": ".3~g"})
    return Chart("chart-deviation", "Deviation per layer",
                 "‖Δ_A − Δ_full‖ / ‖Δ_full‖ per layer: how far the budgeted update is from the"
                 " full-read merge's update.", fig)


def run_report_charts(metrics: dict[str, Any] | None) -> list[Chart]:
    """The charts a finished run's report shows, in page order."""
    metrics = metrics or {}
    charts = [
        expert_bytes_chart(metrics.get("per_expert")),
        io_chart(metrics),
        savings_chart(metrics),
        time_split_chart(metrics.get("seconds")),
        deviation_chart(metrics.get("deviation")),
    ]
    return [c for c in charts if c is not None]
