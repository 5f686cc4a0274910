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
    assert row.rstrip().endswith("| 60% |")
