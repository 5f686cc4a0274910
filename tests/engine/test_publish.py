"""Atomic publication: a staging directory next to the target, one rename, nothing partial."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import BLOCK, listing, load_model, snapshot

from mergehub.engine import api
from mergehub.engine.config import parse_config
from mergehub.engine.errors import DiskFull, OutputExists
from mergehub.engine.executor import Executor
from mergehub.engine.publish import Staging, check_target


def test_publish_renames_the_staging_directory_into_place(tmp_path):
    target = tmp_path / "out"
    with Staging(target) as stage:
        assert stage.path.parent == tmp_path and stage.path.name.startswith(".out.staging-")
        (stage.path / "a.txt").write_text("hello")
        assert not target.exists()
        stage.publish()
    assert listing(tmp_path) == ["out", "out/a.txt"]


def test_a_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with Staging(tmp_path / "out") as stage:
            (stage.path / "a.txt").write_text("partial")
            raise RuntimeError("boom")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_out_of_space_becomes_disk_full(tmp_path, code):
    with pytest.raises(DiskFull, match="nothing was published"):
        with Staging(tmp_path / "out"):
            raise OSError(code, "No space left on device")
    assert listing(tmp_path) == []


def test_other_os_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError):
        with Staging(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "denied")
    assert listing(tmp_path) == []


def test_existing_target_is_refused_and_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(OutputExists, match="--force"):
        Staging(target)
    assert snapshot(target) == {"keep.txt": b"precious"} and listing(tmp_path) == ["out", "out/keep.txt"]


def test_force_replaces_the_target_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with Staging(target, force=True) as stage:
        (stage.path / "new.txt").write_text("new")
        stage.publish()
    assert listing(tmp_path) == ["out", "out/new.txt"]


def test_a_file_in_the_way_is_refused_even_with_force(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputExists, match="not a directory"):
        check_target(tmp_path / "out", force=True)


def test_target_appearing_during_the_merge_is_not_overwritten(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputExists):
        with Staging(target) as stage:
            (stage.path / "a.txt").write_text("mine")
            target.mkdir()
            (target / "theirs.txt").write_text("theirs")
            stage.publish()
    assert listing(tmp_path) == ["out", "out/theirs.txt"]


def test_merge_into_an_existing_directory_fails_before_any_work(tmp_path, family, catalog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old weights")
    with pytest.raises(OutputExists):
        api.run_merge(parse_config(family.config()), out, catalog_dir=catalog, block_size=BLOCK)
    assert snapshot(out) == {"model.safetensors": b"old weights"}
    assert not catalog.exists()  # not even indexed
    api.run_merge(parse_config(family.config()), out, catalog_dir=catalog, block_size=BLOCK, force=True)
    assert load_model(out) and not (out / "model.safetensors").read_bytes().startswith(b"old")
    assert [p for p in listing(tmp_path) if ".staging" in p] == []


def test_a_crash_mid_merge_publishes_nothing(tmp_path, family, catalog, monkeypatch):
    calls = []
    real = Executor.compute

    def crash(self, loaded, p):
        calls.append(loaded.unit.tensor)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return real(self, loaded, p)

    monkeypatch.setattr(Executor, "compute", crash)
    before = listing(tmp_path)
    with pytest.raises(RuntimeError, match="worker died"):
        api.run_merge(parse_config(family.config()), tmp_path / "out", catalog_dir=catalog,
                      block_size=BLOCK)
    assert [p for p in listing(tmp_path) if not p.startswith("catalog")] == before


def test_staging_of_a_dead_process_is_removed_and_a_live_ones_kept(tmp_path):
    import subprocess

    from mergehub.engine import publish

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".old.staging-{publish._HOST}-{dead.pid}-deadbeef"
    live = tmp_path / f".other.staging-{publish._HOST}-{os.getpid()}-cafebabe"
    foreign = tmp_path / f".x.staging-otherhost-{dead.pid}-00000000"
    for d in (stale, live, foreign):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    with publish.Staging(tmp_path / "new") as stage:
        (stage.path / "f").write_text("x")
        stage.publish()
    assert not stale.exists()
    assert live.exists() and foreign.exists()
    assert (tmp_path / "new" / "f").read_text() == "x"
