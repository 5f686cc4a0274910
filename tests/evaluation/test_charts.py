"""Evaluation charts: nothing to draw gives None; otherwise one trace per model (benchmark) or
per task plus the mean (scores against budget), with the numbers of the rows they were given."""

from __future__ import annotations

import json

import pytest

from mergehub.evaluation import charts
from mergehub.evaluation.models import EvalResult


def _r(score: float, low: float, high: float, higher: bool = True, metric: str = "exact_match") -> EvalResult:
    return EvalResult(score=score, ci_low=low, ci_high=high, higher_is_better=higher, metric=metric, n=20)


ROWS = [
    {"label": "merge (run #1)", "role": "merge", "results": {"reverse": _r(0.5, 0.3, 0.7), "sort": _r(0.4, 0.2, 0.6)}},
    {"label": "base", "role": "base", "results": {"reverse": _r(0.1, 0.0, 0.3)}},  # not scored on sort
    {"label": "e1", "role": "expert", "results": {"reverse": _r(0.9, 0.7, 1.0), "sort": _r(0.2, 0.1, 0.4)}},
    {"label": "e2", "role": "expert", "results": {"sort": _r(0.8, 0.6, 0.9)}},
]


def test_benchmark_chart_has_one_bar_trace_per_model():
    chart = charts.benchmark_chart(["reverse", "sort"], ROWS)
    assert chart.id == "chart-benchmark" and "95% intervals" in chart.caption
    traces = chart.figure.data
    assert [t.name for t in traces] == ["merge (run #1)", "base", "e1", "e2"]
    assert all(t.type == "bar" for t in traces) and list(traces[0].x) == ["reverse", "sort"]
    assert list(traces[0].y) == [0.5, 0.4] and list(traces[1].y) == [0.1, None]
    assert list(traces[0].error_y.array) == pytest.approx([0.2, 0.2])
    assert list(traces[2].error_y.arrayminus) == pytest.approx([0.2, 0.1])
    assert traces[2].marker.color != traces[3].marker.color  # each expert its colour
    assert chart.figure.layout.barmode == "group" and list(chart.figure.layout.yaxis.range) == [0, 1.05]
    json.loads(chart.json)  # embeddable


def test_benchmark_chart_without_data_is_none():
    assert charts.benchmark_chart([], ROWS) is None
    assert charts.benchmark_chart(["reverse"], []) is None
    assert charts.benchmark_chart(["chat"], ROWS) is None  # nobody scored on it
    # a row with no score on the chart's tasks is left out
    assert [t.name for t in charts.benchmark_chart(["sort"], ROWS).figure.data] == ["merge (run #1)", "e1", "e2"]


def test_benchmark_chart_of_perplexity_says_lower_is_better():
    rows = [{"label": "m", "role": "checkpoint", "results": {"text": _r(12.5, 11.0, 14.0, higher=False)}}]
    chart = charts.benchmark_chart(["text"], rows)
    assert "lower is better" in chart.caption and chart.figure.layout.yaxis.range is None


POINTS = [
    {"budget": "0.1", "full_expert_bytes": 1000, "planned_expert_bytes": 100, "expert_bytes_read": 90,
     "deviation": {"update_relative": 0.5, "weight_relative": 0.01}, "scores": {"reverse": 0.2, "sort": 0.4}},
    {"budget": "0.5", "full_expert_bytes": 1000, "planned_expert_bytes": 500, "expert_bytes_read": 480,
     "deviation": {"update_relative": 0.1, "weight_relative": 0.002}, "scores": {"reverse": 0.6, "sort": 0.5}},
    {"budget": "1", "full_expert_bytes": 1000, "planned_expert_bytes": 1000, "expert_bytes_read": 0,
     "deviation": {"update_relative": 0.0, "weight_relative": 0.0}, "scores": {"reverse": 0.8, "sort": 0.6}},
]
REFERENCES = [{"label": "base", "role": "base", "scores": {"reverse": 0.1, "sort": 0.1}},
              {"label": "e1", "role": "expert", "scores": {"reverse": 0.9, "sort": 0.2}}]


def test_sweep_score_chart_has_a_line_per_task_and_the_mean():
    chart = charts.sweep_score_chart(POINTS, ["reverse", "sort"], REFERENCES)
    assert [t.name for t in chart.figure.data] == ["reverse", "sort", "mean"]
    assert list(chart.figure.data[0].x) == [0.1, 0.5, 1.0] and list(chart.figure.data[0].y) == [0.2, 0.6, 0.8]
    assert [round(y, 6) for y in chart.figure.data[2].y] == [0.3, 0.55, 0.7]
    # the full-budget mean and the base's mean as horizontal references
    assert sorted(round(s.y0, 6) for s in chart.figure.layout.shapes) == [0.1, 0.7]


def test_sweep_score_chart_without_scores_is_none():
    unscored = [{k: v for k, v in p.items() if k != "scores"} for p in POINTS]
    assert charts.sweep_score_chart(unscored, ["reverse"], REFERENCES) is None
    assert charts.sweep_score_chart(POINTS, [], REFERENCES) is None
    assert charts.sweep_score_chart([], ["reverse"], []) is None


def test_sweep_deviation_and_bytes_charts():
    deviation = charts.sweep_deviation_chart(POINTS)
    assert [list(t.y) for t in deviation.figure.data] == [[0.5, 0.1, 0.0], [0.01, 0.002, 0.0]]
    assert charts.sweep_deviation_chart([{k: v for k, v in p.items() if k != "deviation"} for p in POINTS]) is None
    assert charts.sweep_deviation_chart([]) is None

    traffic = charts.sweep_bytes_chart(POINTS)
    assert [t.name for t in traffic.figure.data] == ["planned expert bytes", "read from storage"]
    assert list(traffic.figure.data[0].y) == [100, 500, 1000] and list(traffic.figure.data[1].y) == [90, 480, 0]
    not_merged = [{k: v for k, v in p.items() if k != "expert_bytes_read"} for p in POINTS]
    assert [t.name for t in charts.sweep_bytes_chart(not_merged).figure.data] == ["planned expert bytes"]
    assert charts.sweep_bytes_chart([]) is None


# A sweep with sketches: every budget twice, "sketch" (part of the bytes in sketches) first, and
# the budgets not in order of size (as typed), so each curve must be sorted by its x.
MODES = [
    {"budget": "0.5", "mode": "sketch", "full_expert_bytes": 1000, "planned_expert_bytes": 500, "sketch_bytes": 120,
     "block_bytes": 380, "expert_bytes_read": 370, "sketch_bytes_read": 120,
     "deviation": {"update_relative": 0.05, "weight_relative": 0.001}, "scores": {"reverse": 0.7, "sort": 0.5}},
    {"budget": "0.5", "mode": "blocks", "full_expert_bytes": 1000, "planned_expert_bytes": 490, "sketch_bytes": 0,
     "expert_bytes_read": 490, "deviation": {"update_relative": 0.1, "weight_relative": 0.002},
     "scores": {"reverse": 0.6, "sort": 0.5}},
    {"budget": "0.1", "mode": "sketch", "full_expert_bytes": 1000, "planned_expert_bytes": 100, "sketch_bytes": 80,
     "block_bytes": 20, "expert_bytes_read": 20, "sketch_bytes_read": 0,
     "deviation": {"update_relative": 0.2, "weight_relative": 0.004}, "scores": {"reverse": 0.5, "sort": 0.4}},
    {"budget": "0.1", "mode": "blocks", "full_expert_bytes": 1000, "planned_expert_bytes": 100, "sketch_bytes": 0,
     "expert_bytes_read": 90, "deviation": {"update_relative": 0.5, "weight_relative": 0.01},
     "scores": {"reverse": 0.2, "sort": 0.4}},
]


def test_sweep_charts_draw_sketch_and_blocks_curves_on_the_same_axes():
    scores = charts.sweep_score_chart(MODES, ["reverse", "sort"], REFERENCES)
    names = [t.name for t in scores.figure.data]
    assert names == ["reverse · sketch + blocks", "sort · sketch + blocks", "sketch + blocks",
                     "reverse · blocks only", "sort · blocks only", "blocks only"]
    by_name = {t.name: t for t in scores.figure.data}
    assert list(by_name["sketch + blocks"].x) == [0.1, 0.5] and list(by_name["blocks only"].x) == [0.1, 0.49]
    assert [round(y, 6) for y in by_name["sketch + blocks"].y] == [0.45, 0.6]
    assert [round(y, 6) for y in by_name["blocks only"].y] == [0.3, 0.55]
    assert by_name["reverse · blocks only"].visible == "legendonly" and by_name["sketch + blocks"].visible is None
    assert by_name["blocks only"].line.dash == "dash" and by_name["sketch + blocks"].line.dash == "solid"
    assert "sketch + blocks" in scores.caption

    deviation = charts.sweep_deviation_chart(MODES)
    by_name = {t.name: t for t in deviation.figure.data}
    assert list(by_name["sketch + blocks"].y) == [0.2, 0.05] and list(by_name["blocks only"].y) == [0.5, 0.1]

    traffic = charts.sweep_bytes_chart(MODES)
    by_name = {t.name: t for t in traffic.figure.data}
    assert list(by_name) == ["sketch + blocks: sketches", "sketch + blocks: exact blocks",
                             "sketch + blocks: read from storage", "blocks only: exact blocks",
                             "blocks only: read from storage"]
    # the sketch plans' bytes stacked: sketches, then exact blocks on top
    assert list(by_name["sketch + blocks: sketches"].y) == [80, 120]
    assert list(by_name["sketch + blocks: exact blocks"].y) == [20, 380]
    assert by_name["sketch + blocks: sketches"].stackgroup == by_name["sketch + blocks: exact blocks"].stackgroup
    # storage reads: exact blocks and sketches together
    assert list(by_name["sketch + blocks: read from storage"].y) == [20, 490]
    assert list(by_name["blocks only: exact blocks"].y) == [100, 490]
    # the byte axis reaches the top of the stack (500), in binary units
    axis = traffic.figure.layout.yaxis
    assert max(axis.tickvals) >= 500 and axis.ticktext[-1] == "512 B" and axis.tickformat is None
    json.loads(traffic.json)
