"""Per-team storage: each team registers only under its own roots, never another team's files,
and a refusal says nothing about what lies outside them."""

import os

import pytest
from django.core.exceptions import ValidationError

from mergehub.registry.models import StorageRoot
from mergehub.registry.roots import (catalog_dir, checkpoint_roots, hf_cache_dir, outputs_dir,
                                     resolve_checkpoint_dir, run_output_dir, team_checkpoints_dir, team_dir)

OUTSIDE = "is not inside your team's checkpoint roots"


def _error(path, team) -> str:
    with pytest.raises(ValidationError) as exc:
        resolve_checkpoint_dir(str(path), team)
    return " ".join(exc.value.message_dict["local_path"])


def test_each_team_has_its_own_folders(settings, tmp_path, acme, rival):
    data = tmp_path / "data"
    assert catalog_dir() == data / "catalog"
    assert team_dir(acme) == data / "teams" / "acme" and team_dir(rival) == data / "teams" / "rival"
    assert outputs_dir(acme) == data / "teams" / "acme" / "outputs"
    assert hf_cache_dir(acme) == data / "teams" / "acme" / "hf"

    class Run:
        pk, team = 7, acme

    assert run_output_dir(Run) == data / "teams" / "acme" / "outputs" / "run-7"
    # the team's own folder first, then the roots shared with every team (tests: tmp_path)
    assert checkpoint_roots(acme) == [team_checkpoints_dir(acme).resolve(), tmp_path.resolve()]


def test_a_directory_under_a_root_resolves(tmp_path, acme):
    d = tmp_path / "models" / "m1"
    d.mkdir(parents=True)
    assert resolve_checkpoint_dir(str(d), acme) == d.resolve()
    # dot-dot that stays inside the root is fine
    assert resolve_checkpoint_dir(str(tmp_path / "models" / ".." / "models" / "m1"), acme) == d.resolve()


def test_the_team_folder_is_a_root_without_any_setting(settings, acme):
    settings.MERGEHUB_CHECKPOINT_ROOTS = []
    mine = team_checkpoints_dir(acme) / "llama"
    mine.mkdir(parents=True)
    assert resolve_checkpoint_dir(str(mine), acme) == mine.resolve()


def test_another_teams_folder_and_outputs_are_never_registrable(settings, tmp_path, acme, rival):
    """Even under a root shared with every team (here the whole tmp_path, which holds the data
    directory), the other team's checkpoints, outputs and Hub cache stay out of reach, and so
    do the catalog and the team's own Hub cache."""
    theirs = [team_checkpoints_dir(rival) / "private", outputs_dir(rival) / "run-30", hf_cache_dir(rival),
              catalog_dir(), hf_cache_dir(acme)]
    for path in theirs:
        path.mkdir(parents=True, exist_ok=True)
        assert OUTSIDE in _error(path, acme), path
    spelled = team_checkpoints_dir(acme) / ".." / ".." / "rival" / "checkpoints" / "private"
    assert OUTSIDE in _error(spelled, acme)
    own_output = outputs_dir(acme) / "run-3"  # a team may register its own merged model
    own_output.mkdir(parents=True)
    assert resolve_checkpoint_dir(str(own_output), acme) == own_output.resolve()


def test_roots_given_to_one_team_are_only_that_teams(settings, tmp_path_factory, acme, rival):
    settings.MERGEHUB_CHECKPOINT_ROOTS = []
    given = tmp_path_factory.mktemp("nfs") / "acme-models"
    (given / "m").mkdir(parents=True)
    StorageRoot.objects.create(team=acme, path=str(given))
    assert resolve_checkpoint_dir(str(given / "m"), acme) == (given / "m").resolve()
    assert OUTSIDE in _error(given / "m", rival)


def test_a_storage_root_may_not_overlap_the_data_directory(settings, tmp_path, acme):
    for path in [tmp_path / "data" / "teams", tmp_path, "relative/dir"]:
        with pytest.raises(ValidationError):
            StorageRoot(team=acme, path=str(path)).clean()
    StorageRoot(team=acme, path="/srv/models").clean()


def test_refusals_do_not_say_what_lies_outside(settings, tmp_path, tmp_path_factory, acme):
    """A missing directory, a file, a link and a real directory outside the roots all get the
    same answer: nothing about existence or link targets."""
    outside = tmp_path_factory.mktemp("secret")
    (outside / "file").write_text("x")
    link = tmp_path / "innocent"
    os.symlink(outside, link)
    answers = {_error(p, acme).replace(str(p), "PATH") for p in
               [outside, outside / "file", outside / "missing", link, tmp_path / ".." / outside.name]}
    assert len(answers) == 1
    (answer,) = answers
    assert OUTSIDE in answer and "secret" not in answer and "symlink" not in answer and "exist" not in answer


def test_a_symlink_inside_a_root_is_accepted(tmp_path, acme):
    target = tmp_path / "real"
    target.mkdir()
    os.symlink(target, tmp_path / "alias")
    assert resolve_checkpoint_dir(str(tmp_path / "alias"), acme) == target.resolve()


def test_missing_directories_and_files_inside_the_roots_are_named(tmp_path, acme):
    assert "no such directory" in _error(tmp_path / "nope", acme)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert "is a file" in _error(f, acme)


@pytest.mark.parametrize("raw,message", [
    ("", "Enter the path"), ("relative/path", "absolute path"), ("/tmp/\x00evil", "NUL"),
    ("/" + "a" * 5000, "too long"), ("/tmp/" + "b" * 300 + "/m", "too long"),
    ("/tmp/caf\udce9", "not valid UTF-8"),
])
def test_malformed_paths_get_a_form_error(acme, raw, message):
    assert message in _error(raw, acme)


def test_prefix_sibling_is_not_inside(tmp_path, acme):
    """/x/root2 is not under /x/root even though the string starts the same."""
    sibling = tmp_path.parent / (tmp_path.name + "2")
    sibling.mkdir()
    assert OUTSIDE in _error(sibling, acme)
