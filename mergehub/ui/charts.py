"""Plotly plumbing the pages' charts share: the ``Chart`` a page embeds, the palette, the common
layout and a byte axis in binary units. The charts themselves live with the data they draw
(mergehub/runs/charts.py, mergehub/registry/charts.py, mergehub/evaluation/charts.py).

A builder takes the plain dicts the services store and returns a ``Chart``: a figure plus the
id, title and caption the page shows. Pages embed ``Chart.json`` in a ``<script
type="application/json">`` element (templates/ui/_chart.html) and static/js/app.js draws it with
the plotly.min.js served from static (the figure never carries plotly.js itself, like
``include_plotlyjs=False``). A builder returns ``None`` when the data it needs is absent, so a page
simply shows fewer charts for an older or partial run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from .formatting import human_bytes

PALETTE = {
    "full": "#c3cad8",
    "planned": "#2458c6",
    "read": "#e07b00",
    "base": "#7a8599",
    "written": "#1f7a4d",
    "skipped": "#d6e2f8",
    "sketch": "#8a4fbf",
}

# Escapes that keep JSON inert inside a <script> element (as django.utils.html.json_script does).
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    caption: str
    figure: go.Figure

    @property
    def json(self) -> str:
        """The figure as JSON that is safe to place verbatim inside a <script> element."""
        return self.figure.to_json().translate(_SCRIPT_ESCAPES)


def apply_layout(fig: go.Figure, *, height: int = 320, **extra: Any) -> go.Figure:
    """The layout every MergeHub chart shares (white template, system font, legend on top);
    ``extra`` overrides or adds layout keys."""
    layout: dict[str, Any] = {
        "template": "plotly_white",
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 20, "b": 50},
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif", "size": 12},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
    }
    fig.update_layout(**(layout | extra))
    return fig


def bytes_axis(top: float | None) -> dict[str, Any]:
    """A byte axis in binary units, up to ``top`` (the largest value it shows). plotly only
    knows SI prefixes ("~s" reads 8 MiB as "8.4MB"), so the ticks are placed at a power of two
    apart, 3 to 6 of them, and labelled by ``tick_bytes``."""
    top = max(float(top or 0), 1.0)
    step = 1
    while top / step > 6:
        step *= 2
    ticks = [i * step for i in range(int(top // step) + 2)]
    return {"tickmode": "array", "tickvals": ticks, "ticktext": [tick_bytes(t) for t in ticks],
            "rangemode": "tozero"}


def tick_bytes(n: int) -> str:
    """An axis label: 0, 512 KiB, 1 MiB, 1.5 MiB (``human_bytes`` without trailing zeros)."""
    if n == 0:
        return "0"
    number, unit = human_bytes(n).split(" ")
    return f"{float(number):g} {unit}"
