"""The benchmark runner's table (bench/run.py report): medians, ratios and throughputs."""

from __future__ import annotations

from bench.run import report


def run(tool, wall, read, rss, total=None, budget="1", written=None):
    row = {"tool": tool, "method": "ties", "budget": None if tool == "mergekit" else budget,
           "wall_s": wall, "read_bytes": read, "peak_rss_bytes": rss}
    if total is not None:
        row["metrics"] = {"seconds": {"total": total}, "bytes_written": written}
    return row


def test_the_table_reports_medians_and_both_throughputs():
    results = {
        "command": "python -m bench.run ...", "family": "/f", "family_summary": {"hidden": 8, "layers": 2, "vocab": 16},
        "full_read_bytes": 4e9, "raw_read_bytes_per_s": [1e9, 2e9, 1.5e9], "raw_direct_read_bytes_per_s": [],
        "read_counter": "ru_inblock", "index": [], "machine": {"cpus": 2, "memory_gb": 24, "platform": "x"},
        "versions": {"mergekit": "0.1.5"},
        "runs": [run("mergekit", 30.0, 4e9, 7e9), run("mergekit", 32.0, 4e9, 7e9), run("mergekit", 31.0, 4e9, 7e9),
                 run("mergehub", 4.0, 3e9, 1e9, 3.0), run("mergehub", 5.0, 3e9, 1e9, 4.0),
                 run("mergehub", 6.0, 3e9, 1e9, 5.0)],
    }
    table = report(results, ["ties"], ["1"], ["mergekit", "mergehub"], markdown=True)
    mergekit_row = next(line for line in table.splitlines() if "| mergekit |" in line)
    mergehub_row = next(line for line in table.splitlines() if "| mergehub |" in line)
    # raw median 1.5 GB/s; mergehub median wall 5 s, merge 4 s, reading 3 GB: 40% and 50%
    assert "| 5.00 |" in mergehub_row and "| 6.20x |" in mergehub_row
    assert "| 40% |" in mergehub_row and "| 4.00 | 50% |" in mergehub_row
    assert "| 31.00 |" in mergekit_row and mergekit_row.rstrip().endswith("| — | — |")
    assert "1.500 GB/s (median of 3 readings, one before each round of runs: 1.000–2.000 GB/s)" in table


def test_the_disk_ceiling_counts_what_a_run_writes():
    """Reads and writes sharing 1.2 GB/s, raw reads 1.5 GB/s: a run reading 3 GB and writing
    1 GB could reach at most 3/4 of 1.2 GB/s, i.e. 60% of raw."""
    results = {
        "command": "c", "family": "/f", "family_summary": {}, "full_read_bytes": 4e9,
        "raw_read_bytes_per_s": [1.5e9], "raw_direct_read_bytes_per_s": [], "read_write_bytes_per_s": [1.2e9],
        "read_counter": "ru_inblock", "index": [], "machine": {"cpus": 2, "memory_gb": 24, "platform": "x"},
        "versions": {"mergekit": None},
        "runs": [run("mergehub", 5.0, 3e9, 1e9, 4.0, written=1e9)],
    }
    table = report(results, ["ties"], ["1"], ["mergehub"], markdown=True)
    assert "disk ceiling" in table and "1.200 GB/s read and written" in table
    row = next(line for line in table.splitlines() if "| mergehub |" in line)
    # and the merge moved (3 + 1) GB in 4 s: 1 GB/s of the 1.2 GB/s ceiling
    assert row.rstrip().endswith("| 60% | 83% |")


def test_kernels_gain_and_targets_are_printed_side_by_side():
    """mergehub-torch (no kernels) next to mergehub: the gain is its wall time over the kernels';
    the issue's targets are checked against mergekit's full merge."""
    def tool_run(tool, wall, method="task_arithmetic", budget="1"):
        row = run(tool, wall, 3e9, 1e9, wall - 1.0, budget=budget, written=1e9)
        return dict(row, method=method)

    results = {
        "command": "c", "family": "/f", "family_summary": {}, "full_read_bytes": 4e9,
        "raw_read_bytes_per_s": [1.5e9], "raw_direct_read_bytes_per_s": [], "read_write_bytes_per_s": [1.2e9],
        "read_counter": "ru_inblock", "index": [], "machine": {"cpus": 2, "memory_gb": 24, "platform": "x"},
        "versions": {"mergekit": "0.1.5"},
        "runs": [dict(run("mergekit", 40.0, 4e9, 7e9), method="task_arithmetic"),
                 tool_run("mergehub", 8.0), tool_run("mergehub-torch", 12.0),
                 tool_run("mergehub", 4.0, budget="0.1"), tool_run("mergehub-torch", 4.4, budget="0.1")],
    }
    table = report(results, ["task_arithmetic"], ["1", "0.1"], ["mergekit", "mergehub", "mergehub-torch"], True)
    row = next(line for line in table.splitlines() if "| 1 | mergehub |" in line)
    assert "| 5.00x | 1.50x |" in row  # 40 / 8 against mergekit, 12 / 8 against no kernels
    assert "| 0.1 | mergehub-torch |" in table
    assert "- target: task_arithmetic at budget 1 ≥ 4x mergekit's full merge: 5.00x (met)" in table
    assert "- target: task_arithmetic at budget 0.1 ≥ 8x mergekit's full merge: 10.00x (met)" in table
    # (3 + 1) GB in 7 merge seconds against 1.2 GB/s: 48%
    assert "- target: task_arithmetic ≥ 70% of its disk ceiling (merge): 48% (NOT met)" in table


def test_methods_without_a_base_run_at_full_budget_only(tmp_path):
    """MergeHub plans no budget for a method without a base (it reads whole models): the
    benchmark leaves those budgets out for it instead of failing the whole run."""
    import json

    from bench.run import Bench, build_parser

    (tmp_path / "family.json").write_text(json.dumps({"base": str(tmp_path / "base"), "experts": []}))
    (tmp_path / "linear.yaml").write_text("merge_method: linear\nmodels: []\n")
    (tmp_path / "ties.yaml").write_text("merge_method: ties\nbase_model: /b\nmodels: []\n")
    args = build_parser().parse_args(["--family", str(tmp_path), "--methods", "linear,ties",
                                      "--work-dir", str(tmp_path / "out")])
    assert Bench(args, []).baseless == {"linear"}
