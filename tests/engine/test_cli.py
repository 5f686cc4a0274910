"""The ``mergehub`` command line: merge, index, plan, sweep (replay is in test_manifest.py)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BLOCK, load_model, run_cli

from mergehub.engine import api
from mergehub.engine.config import parse_config
from mergehub.engine.layout import read_model_layout
from mergehub.engine.reader import RangeReader

PLAN_KEYS = {"planned_expert_bytes", "full_expert_bytes", "certificate", "blocks_planned", "blocks_total",
             "plan_digest"}


def _index_all(family, catalog):
    for e in family.experts:
        api.index_model(e, family.base, catalog_dir=catalog, block_size=BLOCK)


def _forbid_expert_weight_reads(monkeypatch, family) -> list:
    """Record every read of an expert file's data region (headers are allowed)."""
    header_end = {str(f.path): f.header_bytes for e in family.experts for f in read_model_layout(e).files}
    violations: list = []
    real_pread, real_preadv, real_open = os.pread, os.preadv, builtins.open

    def path_of(fd):
        return os.readlink(f"/proc/self/fd/{fd}")

    def pread(fd, n, offset):
        if path_of(fd) in header_end and offset + n > header_end[path_of(fd)]:
            violations.append((path_of(fd), offset, n))
        return real_pread(fd, n, offset)

    def preadv(fd, buffers, offset, *rest):
        violations.append((path_of(fd), offset, "preadv"))
        return real_preadv(fd, buffers, offset, *rest)

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(Path(file).absolute()) in header_end:
            violations.append((str(file), "open"))
        return real_open(file, *args, **kwargs)

    def no_range_reads(self, path, offset, nbytes, slab=None):
        violations.append((str(path), offset, "RangeReader"))
        raise AssertionError("plan read expert weights")

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(RangeReader, "read_range", no_range_reads)
    return violations


def test_plan_json_and_reads_no_expert_weights(family, catalog, capsys, monkeypatch):
    config = family.write_config()
    _index_all(family, catalog)
    violations = _forbid_expert_weight_reads(monkeypatch, family)
    rc, out, err = run_cli(capsys, "plan", config, "--budget", "0.5", "--json", "--catalog", catalog,
                           "--block-size", BLOCK)
    monkeypatch.undo()
    assert rc == 0 and err == "" and violations == []
    d = json.loads(out)
    assert PLAN_KEYS <= set(d)
    assert 0 < d["planned_expert_bytes"] <= d["full_expert_bytes"] // 2
    assert isinstance(d["certificate"], float) and d["certificate"] > 0
    assert 0 < d["blocks_planned"] < d["blocks_total"] and len(d["plan_digest"]) == 64
    # the same plan the library gives
    plan = api.plan_merge(api.load_config(config), budget="0.5", catalog_dir=catalog, block_size=BLOCK)
    assert plan.digest == d["plan_digest"]


def test_the_guard_catches_weight_reads(family, catalog, monkeypatch):
    """The read guard above is not vacuous: a merge (which reads experts) trips it."""
    config = parse_config(family.config())
    _index_all(family, catalog)
    violations = _forbid_expert_weight_reads(monkeypatch, family)
    with pytest.raises(AssertionError, match="plan read expert weights"):
        api.run_merge(config, family.root / "out", catalog_dir=catalog, block_size=BLOCK)
    monkeypatch.undo()
    assert violations


def test_plan_reports_indexing_it_had_to_do_first(family, catalog, capsys):
    config = family.write_config()
    rc, out, err = run_cli(capsys, "plan", config, "--json", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and PLAN_KEYS <= set(json.loads(out))  # stdout stays one JSON object
    assert err.startswith("indexed the experts missing from the catalog first in ") and err.count("\n") == 1
    rc, out, err = run_cli(capsys, "plan", config, "--json", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and err == ""
    rc, out, err = run_cli(capsys, "plan", config, "--catalog", catalog, "--block-size", 2 * BLOCK)
    assert rc == 0 and out.startswith("indexed the experts missing") and err == ""


def test_the_catalog_and_block_size_default_to_the_web_apps_environment(tmp_path, family, capsys, monkeypatch):
    """Without --catalog and --block-size the CLI uses $MERGEHUB_DATA_DIR/catalog and
    $MERGEHUB_BLOCK_SIZE, as the web app does (mergehub/engine/locations.py), so each finds
    what the other indexed (tests/registry/test_shared_catalog.py runs it against the web app)."""
    monkeypatch.delenv("MERGEHUB_CATALOG")
    monkeypatch.setenv("MERGEHUB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MERGEHUB_BLOCK_SIZE", str(BLOCK))
    config = family.write_config()
    rc, out, _ = run_cli(capsys, "plan", config)
    assert rc == 0 and out.startswith("indexed the experts missing")
    assert len(list((tmp_path / "data" / "catalog").glob("*.json"))) == 2
    rc, out, _ = run_cli(capsys, "plan", config, "--catalog", tmp_path / "data" / "catalog", "--block-size", BLOCK)
    assert rc == 0 and not out.startswith("indexed")  # the same entries, spelled out


def test_plan_text_and_null_certificate(family, catalog, capsys):
    config = family.write_config("ties", parameters={"density": 0.5})
    rc, out, _ = run_cli(capsys, "plan", config, "--budget", "0.25", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and "plan digest:" in out and "n/a (operator is not additive)" in out
    rc, out, _ = run_cli(capsys, "plan", config, "--json", "--catalog", catalog, "--block-size", BLOCK)
    assert json.loads(out)["certificate"] is None


def test_merge_reports_the_index_cost_on_its_own_line(tmp_path, family, catalog, capsys):
    config = family.write_config()
    rc, out, err = run_cli(capsys, "merge", config, tmp_path / "out", "--catalog", catalog, "--block-size", BLOCK,
                           "--budget", "0.5")
    assert rc == 0 and err == ""  # no progress bar when stderr is not a terminal
    lines = out.splitlines()
    assert lines[0].startswith("indexed 2 expert(s) first in ") and lines[0].endswith("reused by later merges)")
    assert lines[1].startswith("merged task_arithmetic into ")
    assert any(line.startswith("certificate:") for line in lines)
    rc, out, _ = run_cli(capsys, "merge", config, tmp_path / "out2", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and not out.startswith("indexed") and "merged task_arithmetic" in out
    assert load_model(tmp_path / "out2")


def test_a_progress_bar_is_drawn_on_a_terminal(tmp_path, family, catalog, capsys, monkeypatch):
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = run_cli(capsys, "merge", family.write_config(), tmp_path / "out", "--catalog", catalog,
                           "--block-size", BLOCK)
    assert rc == 0 and "merged task_arithmetic" in out
    assert "index" in err and "merge" in err and "\r" in err  # tqdm bars for both stages, on stderr


def test_sizes_are_printed_in_binary_units(tmp_path, family, catalog, capsys):
    """As on the web pages: KiB / MiB / GiB (powers of 1024), never the decimal KB / MB."""
    _index_all(family, catalog)
    config = family.write_config()
    rc, out, _ = run_cli(capsys, "plan", config, "--catalog", catalog, "--block-size", BLOCK)
    full = json.loads(run_cli(capsys, "plan", config, "--json", "--catalog", catalog, "--block-size", BLOCK)[1])
    assert rc == 0 and full["full_expert_bytes"] >= 1024
    assert f"of {full['full_expert_bytes'] / 1024:.2f} KiB expert bytes" in out
    rc, out, _ = run_cli(capsys, "merge", config, tmp_path / "out", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and "KiB" in out
    for decimal in (" KB", " MB", " GB"):
        assert decimal not in out


def test_a_budget_that_plans_nothing_warns_that_the_output_is_the_base(tmp_path, family, catalog, capsys):
    _index_all(family, catalog)
    config = family.write_config()
    rc, out, err = run_cli(capsys, "plan", config, "--budget", "1B", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and "planned 0 B of " in out
    assert err.startswith("warning: budget 1B plans no expert block and no sketch") and "equals the base" in err
    rc, out, err = run_cli(capsys, "plan", config, "--budget", "0.5", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and err == ""
    rc, out, err = run_cli(capsys, "merge", config, tmp_path / "out", "--budget", "1B", "--catalog", catalog,
                           "--block-size", BLOCK)
    assert rc == 0 and "output equals the base" in err
    manifest = json.loads((tmp_path / "out" / "mergehub_manifest.json").read_text())
    assert any("output equals the base" in w for w in manifest["metrics"]["warnings"])
    merged, base = load_model(tmp_path / "out"), load_model(family.base)
    assert all(torch.equal(merged[name], base[name]) for name in base)  # what the warning says


def test_merge_options(tmp_path, family, catalog, capsys):
    config = family.write_config("dare_linear", parameters={"density": 0.5})
    rc, out, _ = run_cli(capsys, "merge", config, tmp_path / "a", "--catalog", catalog, "--block-size", "64B",
                         "--seed", 3, "--device", "cpu", "--shard-size", "400B", "--measure-deviation")
    assert rc == 0 and "deviation from the full-read merge" in out
    doc = json.loads((tmp_path / "a" / "mergehub_manifest.json").read_text())
    assert doc["seed"] == 3 and doc["plan"]["block_size"] == 64 and doc["device"] == "cpu"
    assert (tmp_path / "a" / "model.safetensors.index.json").exists()


def test_index_command(family, catalog, capsys):
    args = ("index", family.experts[0], "--base", family.base, "--catalog", catalog, "--block-size", BLOCK)
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0 and "indexed in" in out and "tensors differ from the base" in out and err == ""
    rc, out, _ = run_cli(capsys, *args)
    assert rc == 0 and "already indexed (current)" in out
    rc, out, _ = run_cli(capsys, *args, "--json")
    d = json.loads(out)
    assert {"file_hashes", "base_file_hashes", "tensors", "nonfinite", "seconds", "bytes_read"} <= set(d)
    assert d["tensors"]["model.norm.weight"]["zero_blocks"] == 1
    rc, out, _ = run_cli(capsys, *args, "--force")
    assert rc == 0 and "indexed in" in out


def test_sweep_json(tmp_path, family, catalog, capsys, monkeypatch):
    config = family.write_config()
    _index_all(family, catalog)
    reads: list = []
    real = RangeReader.read_range

    def spy(self, path, offset, nbytes, slab=None):
        reads.append((str(path), offset, nbytes))
        return real(self, path, offset, nbytes, slab)

    monkeypatch.setattr(RangeReader, "read_range", spy)
    rc, out, err = run_cli(capsys, "sweep", config, "--budgets", "1,0.5,0.25,0.1", "--json", "--catalog", catalog,
                           "--block-size", BLOCK, "--device", "cpu")
    monkeypatch.undo()
    assert rc == 0 and err == ""
    both = json.loads(out)
    assert [(r["budget"], r["mode"]) for r in both] == [(b, m) for b in ["1", "0.5", "0.25", "0.1"]
                                                        for m in ("sketch", "blocks")]
    rows = [r for r in both if r["mode"] == "blocks"]
    for r in both:
        assert PLAN_KEYS <= set(r) and r["certificate"] is not None
        assert r["deviation"]["absolute"] <= r["certificate"] * (1 + 1e-5) + 1e-6
    assert rows[0]["deviation"]["absolute"] == 0.0 and rows[0]["certificate"] == 0.0
    planned = [r["planned_expert_bytes"] for r in rows]
    assert planned == sorted(planned, reverse=True) and rows[-1]["deviation"]["absolute"] > 0
    # one pass: no byte of an expert is read twice, whatever the number of budgets
    expert_reads = [(p, o, n) for p, o, n in reads if Path(p).parent in map(Path, family.experts)]
    seen = set()
    for path, offset, n in expert_reads:
        span = {(path, b) for b in range(offset, offset + n)}
        assert not span & seen
        seen |= span
    assert sum(n for _, _, n in expert_reads) == rows[0]["planned_expert_bytes"]
    # each budget's deviation is what a separate budgeted merge measures, with or without sketches
    for r in both[2:6]:
        m = api.run_merge(api.load_config(config), tmp_path / f"m{r['budget']}-{r['mode']}", catalog_dir=catalog,
                          block_size=BLOCK, budget=r["budget"], measure_deviation=True, device="cpu",
                          sketch_rank=None if r["mode"] == "sketch" else 0).metrics
        assert m["planned_expert_bytes"] == r["planned_expert_bytes"]
        assert m["deviation"]["absolute"] == pytest.approx(r["deviation"]["absolute"], rel=1e-12)
        assert m["deviation"]["update_relative"] == pytest.approx(r["deviation"]["update_relative"], rel=1e-12)
    rc, out, _ = run_cli(capsys, "sweep", config, "--budgets", "1,0.1", "--catalog", catalog, "--block-size", BLOCK)
    assert rc == 0 and len(out.splitlines()) == 5  # a header, then each budget with and without sketches


def test_sweep_needs_a_base(family, catalog, capsys):
    config = family.write_config("linear", with_base=False)
    rc, _, err = run_cli(capsys, "sweep", config, "--catalog", catalog)
    assert rc == 2 and "needs a base model" in err


@pytest.fixture
def script() -> Path:
    """The installed ``mergehub`` console script."""
    path = Path(sys.executable).parent / "mergehub"
    if not path.exists():
        pytest.skip("the mergehub console script is not installed in this environment")
    return path


def test_the_console_script_exits_2_with_one_line(tmp_path, script):
    proc = subprocess.run([str(script), "merge", str(tmp_path / "nope.yaml"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mergehub: error: config file") and "not found" in proc.stderr
    assert not (tmp_path / "out").exists()
    help_proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert help_proc.returncode == 0
    for command in ("merge", "index", "plan", "replay", "sweep"):
        assert command in help_proc.stdout


def test_the_console_script_is_run_which_skips_the_interpreters_teardown(tmp_path):
    """`run` flushes what main printed and ends the process without the teardown (exit hooks
    and all) that costs ~0.15 s once torch is imported; statuses are main's and argparse's."""
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["mergehub"].value == "mergehub.engine.cli:run"
    driver = ("import atexit, sys\n"
              "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
              "sys.argv = ['mergehub', *sys.argv[1:]]\n"
              "from mergehub.engine.cli import run\n"
              "run()\n")
    helped = subprocess.run([sys.executable, "-c", driver, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "replay" in helped.stdout  # flushed through the pipe
    assert "teardown ran" not in helped.stderr
    misused = subprocess.run([sys.executable, "-c", driver, "merge"], capture_output=True, text=True,
                             timeout=120)
    assert misused.returncode == 2 and "usage:" in misused.stderr
    failed = subprocess.run([sys.executable, "-c", driver, "plan", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("mergehub: error: config file")
    assert "teardown ran" not in failed.stderr + misused.stderr


def test_a_closed_stdout_ends_quietly_after_the_work_is_done(tmp_path, family, catalog, script):
    """`mergehub merge … | head -c 0`: the merge is published, and the report that no one reads
    ends the command like SIGPIPE ends a shell tool (141), not as a path error on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is printed
    try:
        proc = subprocess.run([str(script), "merge", str(family.write_config()), str(tmp_path / "out"),
                               "--catalog", str(catalog), "--block-size", str(BLOCK)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""
    assert (tmp_path / "out" / "mergehub_manifest.json").is_file()


def test_an_unwritable_output_path_is_one_line_that_says_what_to_check(tmp_path, family, catalog, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, out, err = run_cli(capsys, "merge", family.write_config(), blocker / "out", "--catalog", catalog,
                           "--block-size", BLOCK)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mergehub: error: ")
    assert "writable (output)" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"
