"""The checkpoint page's chart: the delta norm per layer, from the checkpoint's index. How a
page embeds a ``Chart``: mergehub/ui/charts.py."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from mergehub.ui.charts import PALETTE, Chart, apply_layout


def delta_norms_chart(data: dict[str, Any] | None) -> Chart | None:
    """‖θ_expert − θ_base‖₂ per layer (from the checkpoint's index)."""
    layers = (data or {}).get("layers") or []
    norms = (data or {}).get("norms") or []
    if not layers or len(layers) != len(norms):
        return None
    fig = go.Figure(go.Bar(x=[str(layer) for layer in layers], y=[float(n) for n in norms],
                           marker_color=PALETTE["planned"],
                           hovertemplate="layer %{x}: ‖δ‖₂ = %{y:.4g}<extra></extra>"))
    apply_layout(fig, xaxis={"type": "category", "title": "layer"},
            yaxis={"title": "‖δ‖₂", "rangemode": "tozero"})
    return Chart("chart-delta-norms", "Delta norm per layer",
                 "L2 norm of the difference to the base, per layer, from the index.", fig)
