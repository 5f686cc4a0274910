"""Chart builders: the figures carry the numbers from the run metrics, and their JSON is safe to embed."""

import json

from mergehub.registry.charts import delta_norms_chart
from mergehub.runs import charts
from mergehub.ui.charts import tick_bytes
from mergehub.ui.formatting import human_bytes, human_seconds, percent

METRICS = {
    "budget_bytes": 600,
    "planned_expert_bytes": 500,
    "full_expert_bytes": 2000,
    "nonzero_expert_bytes": 1800,
    "expert_bytes_read": 450,
    "base_bytes_read": 1000,
    "bytes_written": 1000,
    "certificate": 0.25,
    "deviation": {"update_relative": 0.1, "weight_relative": 0.001, "per_layer": {"0": 0.2, "1": 0.05}},
    "seconds": {"plan": 0.01, "read": 0.2, "compute": 0.3, "write": 0.1, "total": 0.61, "index": 1.5},
    "per_expert": [
        {"name": "math", "planned_bytes": 300, "full_bytes": 1000, "read_bytes": 280},
        {"name": "code", "planned_bytes": 200, "full_bytes": 1000, "read_bytes": 170},
    ],
}


def test_expert_bytes_chart_has_full_planned_and_read_series_per_expert():
    chart = charts.expert_bytes_chart(METRICS["per_expert"])
    traces = {t.name: t for t in chart.figure.data}
    assert set(traces) == {"Full", "Planned", "Read from storage"}
    assert list(traces["Planned"].x) == ["math", "code"]
    assert list(traces["Planned"].y) == [300, 200]
    assert list(traces["Full"].y) == [1000, 1000]
    assert list(traces["Read from storage"].y) == [280, 170]


def test_expert_bytes_chart_without_measured_reads_has_two_series():
    rows = [{"name": "a", "planned_bytes": 1, "full_bytes": 2}]
    assert [t.name for t in charts.expert_bytes_chart(rows).figure.data] == ["Full", "Planned"]
    assert charts.expert_bytes_chart([]) is None


def test_io_chart_shows_planned_and_storage_reads():
    bar = charts.io_chart(METRICS).figure.data[0]
    values = dict(zip(bar.y, bar.x))
    assert values["Planned expert reads"] == 500
    assert values["Expert bytes read from storage"] == 450
    assert values["Base bytes read from storage"] == 1000
    assert charts.io_chart({}) is None


def test_io_and_savings_charts_split_sketches_from_exact_blocks():
    metrics = {**METRICS, "planned_sketch_bytes": 120, "sketches_planned": 6, "sketch_rank": 16,
               "sketch_bytes_requested": 120, "sketch_bytes_read": 100}
    bar = charts.io_chart(metrics).figure.data[0]
    values = dict(zip(bar.y, bar.x))
    assert "Planned expert reads" not in values
    assert values["Planned exact blocks"] == 380 and values["Planned sketches"] == 120
    assert values["Expert bytes read from storage"] == 450 and values["Sketch bytes read from storage"] == 100
    pie = charts.savings_chart(metrics).figure.data[0]
    assert list(pie.labels) == ["Exact blocks read (planned)", "Sketches read (planned)", "Expert bytes skipped"]
    assert list(pie.values) == [380, 120, 1500]
    per_expert = [{"name": "e1", "full_bytes": 100, "planned_bytes": 50, "sketch_bytes": 10, "read_bytes": 40}]
    assert [t.name for t in charts.expert_bytes_chart(per_expert).figure.data] == [
        "Full", "Planned", "Planned sketches", "Read from storage"]


def test_savings_chart_splits_full_bytes_into_read_and_skipped():
    chart = charts.savings_chart(METRICS)
    pie = chart.figure.data[0]
    assert list(pie.values) == [500, 1500]
    assert "75.0%" in chart.figure.layout.annotations[0].text
    assert charts.savings_chart({"full_expert_bytes": 0}) is None


def test_time_split_chart_stacks_the_four_stages():
    chart = charts.time_split_chart(METRICS["seconds"])
    assert [t.name for t in chart.figure.data] == ["plan", "read", "compute", "write"]
    assert [t.x[0] for t in chart.figure.data] == [0.01, 0.2, 0.3, 0.1]
    assert "Indexing" in chart.caption
    assert charts.time_split_chart({"total": 0}) is None


def test_deviation_chart_only_when_measured():
    assert list(charts.deviation_chart(METRICS["deviation"]).figure.data[0].y) == [0.2, 0.05]
    assert charts.deviation_chart(None) is None
    assert charts.deviation_chart({"update_relative": 0.1, "per_layer": {}}) is None


def test_delta_norms_chart_uses_layers_as_categories():
    chart = delta_norms_chart({"layers": ["embed", 0, 1], "norms": [0.5, 1.0, 2.0], "tensors": []})
    bar = chart.figure.data[0]
    assert list(bar.x) == ["embed", "0", "1"]
    assert list(bar.y) == [0.5, 1.0, 2.0]
    assert delta_norms_chart({"layers": [], "norms": []}) is None
    assert delta_norms_chart({"layers": [0], "norms": []}) is None


def test_run_report_charts_skip_what_is_missing():
    assert [c.id for c in charts.run_report_charts(METRICS)] == [
        "chart-expert-bytes", "chart-io", "chart-savings", "chart-time", "chart-deviation"]
    assert charts.run_report_charts({}) == []
    no_deviation = dict(METRICS, deviation=None)
    assert "chart-deviation" not in [c.id for c in charts.run_report_charts(no_deviation)]


def test_chart_json_is_inert_inside_a_script_element():
    rows = [{"name": "</script><script>alert(1)</script>", "planned_bytes": 1, "full_bytes": 2}]
    text = charts.expert_bytes_chart(rows).json
    assert "</script>" not in text and "<" not in text
    figure = json.loads(text)  # still valid JSON, and the name survives decoding
    assert figure["data"][0]["x"] == [rows[0]["name"]]


def test_human_formatting():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.50 KiB"
    assert human_bytes(5 * 1024**3) == "5.00 GiB"
    assert human_bytes(300 * 1024**2) == "300 MiB"
    assert human_bytes(None) == "—"
    assert human_seconds(0.0123) == "12 ms"
    assert human_seconds(75) == "1 min 15 s"
    assert percent(1, 4) == "25.0%"
    assert percent(1, 0) == "—"


def test_byte_axes_are_labelled_in_binary_units():
    """plotly's own "~s" format is SI (8 MiB reads "8.39MB"): byte axes carry their own ticks, a
    power of two apart, labelled in KiB / MiB / GiB."""
    mib = 1024**2
    rows = [{"name": "a", "planned_bytes": 3 * mib, "full_bytes": 8 * mib}]
    axis = charts.expert_bytes_chart(rows).figure.layout.yaxis
    assert axis.tickformat is None and axis.ticksuffix is None
    assert list(axis.tickvals) == [0, 2 * mib, 4 * mib, 6 * mib, 8 * mib, 10 * mib]
    assert list(axis.ticktext) == ["0", "2 MiB", "4 MiB", "6 MiB", "8 MiB", "10 MiB"]
    io = charts.io_chart(METRICS).figure.layout.xaxis  # 2000 bytes at most, axis to 1.25×
    assert list(io.ticktext) == ["0", "512 B", "1 KiB", "1.5 KiB", "2 KiB", "2.5 KiB"]
    assert max(io.tickvals) >= io.range[1]
    assert tick_bytes(int(1.25 * 1024**3)) == "1.25 GiB"


def test_deviation_axis_reads_in_plain_numbers():
    axis = charts.deviation_chart(METRICS["deviation"]).figure.layout.yaxis
    assert "e" not in axis.tickformat  # 0.25, not 2.5e−1
