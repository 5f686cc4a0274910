import os

import pytest
from django.core.exceptions import ValidationError

from mergehub.registry.roots import (catalog_dir, checkpoint_roots, outputs_dir, resolve_checkpoint_dir,
                                     run_output_dir)


def _error(path) -> str:
    with pytest.raises(ValidationError) as exc:
        resolve_checkpoint_dir(str(path))
    return " ".join(exc.value.message_dict["local_path"])


def test_directories_follow_settings(settings, tmp_path):
    assert catalog_dir() == tmp_path / "data" / "catalog"
    assert outputs_dir() == tmp_path / "data" / "outputs"
    assert run_output_dir(7) == tmp_path / "data" / "outputs" / "run-7"
    assert checkpoint_roots() == [tmp_path.resolve()]


def test_directory_under_root_resolves(settings, tmp_path):
    d = tmp_path / "models" / "m1"
    d.mkdir(parents=True)
    assert resolve_checkpoint_dir(str(d)) == d.resolve()
    # dot-dot that stays inside the root is fine
    assert resolve_checkpoint_dir(str(tmp_path / "models" / ".." / "models" / "m1")) == d.resolve()


def test_path_outside_roots_is_refused(settings, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    assert "outside the allowed checkpoint roots" in _error(outside)


def test_dot_dot_escape_is_refused(settings, tmp_path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    escape = tmp_path / ".." / ".." / outside.relative_to(outside.anchor)
    assert "outside the allowed checkpoint roots" in _error(escape)


def test_symlink_escaping_a_root_is_refused(settings, tmp_path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("secret")
    link = tmp_path / "innocent"
    os.symlink(outside, link)
    message = _error(link)
    assert "symlink" in message and str(outside) in message


def test_symlink_inside_a_root_is_accepted(settings, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    os.symlink(target, tmp_path / "alias")
    assert resolve_checkpoint_dir(str(tmp_path / "alias")) == target.resolve()


def test_missing_directory_and_files_are_refused(settings, tmp_path):
    assert "no such directory" in _error(tmp_path / "nope")
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert "is a file" in _error(f)


@pytest.mark.parametrize("raw", ["", "relative/path", "/tmp/\x00evil"])
def test_blank_relative_and_nul_paths_are_refused(settings, raw):
    with pytest.raises(ValidationError):
        resolve_checkpoint_dir(raw)


def test_prefix_sibling_is_not_inside(settings, tmp_path):
    """/x/root2 is not under /x/root even though the string starts the same."""
    sibling = tmp_path.parent / (tmp_path.name + "2")
    sibling.mkdir()
    assert "outside" in _error(sibling)
