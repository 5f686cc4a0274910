"""Which files of a run may leave the server: the regular files at the top of its own output
directory, reached without following links; nothing else, whatever the name or the link."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mergehub.publishing.outputs import ModelUnavailable, UnknownFile, open_published_file, published_files

pytestmark = pytest.mark.django_db


def test_lists_every_published_file_with_its_size(merged_run):
    files = published_files(merged_run)
    on_disk = {p.name: p.stat().st_size for p in Path(merged_run.output_path).iterdir() if p.is_file()}
    assert {f.name: f.size for f in files} == on_disk
    kinds = {f.name: f.kind for f in files}
    assert kinds["mergehub_manifest.json"] == "manifest"
    assert kinds["config.json"] == "other"
    weights = [f for f in files if f.kind == "weights"]
    assert weights and files[0].kind == "weights"  # weights first
    assert all(f.output_hash == merged_run.manifest["outputs"]["files"][f.name] for f in weights)


def test_links_subdirectories_and_hidden_files_are_not_published(merged_run, tmp_path):
    out = Path(merged_run.output_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (out / "link.json").symlink_to(secret)
    (out / "sub").mkdir()
    (out / "sub" / "x.json").write_text("{}")
    (out / ".hidden").write_text("x")
    names = {f.name for f in published_files(merged_run)}
    assert not names & {"link.json", "sub", ".hidden", "x.json"}
    for name in ("link.json", "sub", ".hidden", "../merged.txt", "..", "sub/x.json", "/etc/passwd", "nope.json"):
        with pytest.raises(UnknownFile):
            open_published_file(merged_run, name)


def test_a_file_swapped_for_a_link_after_listing_is_not_opened(merged_run, tmp_path):
    from mergehub.publishing.outputs import open_at, opened_files

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    with opened_files(merged_run) as (files, dir_fd):
        target = Path(merged_run.output_path) / "config.json"
        target.unlink()
        target.symlink_to(secret)
        with pytest.raises(UnknownFile):
            open_at(dir_fd, "config.json")


def test_open_streams_the_file_itself(merged_run):
    handle, file = open_published_file(merged_run, "config.json")
    with handle:
        assert handle.read() == (Path(merged_run.output_path) / "config.json").read_bytes()
    assert file.name == "config.json"


def test_a_run_that_did_not_succeed_has_nothing_to_hand_out(merged_run):
    merged_run.status = "failed"
    with pytest.raises(ModelUnavailable, match="only a run that succeeded"):
        published_files(merged_run)


def test_an_output_that_is_gone_says_so(merged_run):
    shutil.rmtree(merged_run.output_path)
    with pytest.raises(ModelUnavailable, match="not on disk any more"):
        published_files(merged_run)


def test_an_output_directory_swapped_for_a_link_is_refused(merged_run, tmp_path):
    out = Path(merged_run.output_path)
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), str(moved))
    out.symlink_to(moved, target_is_directory=True)
    with pytest.raises(ModelUnavailable):
        published_files(merged_run)


def test_a_recorded_output_path_outside_the_run_folder_is_refused(merged_run, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(merged_run.output_path, other)
    merged_run.output_path = str(other)
    with pytest.raises(ModelUnavailable):
        published_files(merged_run)
    merged_run.output_path = str(Path(merged_run.output_path).parent)  # not a run-<id> folder either
    with pytest.raises(ModelUnavailable):
        published_files(merged_run)
    assert os.path.isdir(other)
