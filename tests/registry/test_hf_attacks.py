"""Hub revision traversal and cache escapes (security issue "Hub revision traversal (high)").

huggingface_hub resolves a branch name by reading ``refs/<revision>`` in the cache and joining
that file's content under ``snapshots/``; it follows links. Team B used that to register a
path inside team A's merged output: revision ``../snapshots/<hash>/evil.txt`` made the library
read B's own downloaded ``evil.txt`` (content ``../../../outputs/run-30``) as a ref. Every
variant here must be refused with a one-line HubError, and no path returned.

Each team's Hub cache is a tmp_path folder (``tmp_path/teamX/hf``), mirroring
``DATA_DIR/teams/<slug>/hf``, so these tests do not depend on the team/roots code.
"""

from __future__ import annotations

import os
import shutil

import pytest
from huggingface_hub import snapshot_download

from mergehub.engine.api import MergeHubError
from mergehub.registry import hf
from tests.fixtures.family import make_family
from tests.registry.hf_cache import COMMIT, fill_cache, repo_dir, write_ref

EVIL_COMMIT = "e" * 40
OTHER_COMMIT = "f" * 40


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("hub"), experts=1)


@pytest.fixture
def teams(tmp_path, family):
    """Team A with a private merged model at ``teamA/outputs/run-30``; team B, the attacker,
    with ``attacker/repo`` in its own cache (snapshot EVIL_COMMIT holding ``evil.txt``)."""
    a_run = tmp_path / "teamA" / "outputs" / "run-30"
    shutil.copytree(family["base"], a_run)
    b_cache = tmp_path / "teamB" / "hf"
    evil = fill_cache(b_cache, "attacker/repo", family["base"], commit=EVIL_COMMIT)
    elsewhere = tmp_path / "elsewhere"  # a folder outside every root
    shutil.copytree(family["base"], elsewhere)
    return {"a_cache": tmp_path / "teamA" / "hf", "a_run": a_run, "b_cache": b_cache,
            "b_repo": repo_dir(b_cache, "attacker/repo"), "evil": evil, "elsewhere": elsewhere}


def _call(which, repo_id, revision, cache_dir):
    if which == "cached_snapshot":
        return hf.cached_snapshot(repo_id, revision, cache_dir=cache_dir)
    return hf.download(repo_id, revision, cache_dir=cache_dir)


BOTH = pytest.mark.parametrize("which", ["cached_snapshot", "download"])


def _refused(which, repo_id, revision, cache_dir, match, *, secret=None):
    with pytest.raises(hf.HubError, match=match) as exc:
        _call(which, repo_id, revision, cache_dir)
    message = str(exc.value)
    assert isinstance(exc.value, MergeHubError)
    assert "\n" not in message
    if secret is not None:  # the message does not say where the link leads
        assert str(secret) not in message
    return message


# --- the reported attack -----------------------------------------------------------------

@pytest.mark.parametrize("content", ["../../../../teamA/outputs/run-30",  # per-team layout
                                     "../../../outputs/run-30"])  # the report's global layout
def test_the_reported_attack_works_against_bare_huggingface_hub(teams, tmp_path, content):
    """Without our checks huggingface_hub hands back a folder outside the cache (the bug)."""
    (teams["evil"] / "evil.txt").write_text(content)
    (tmp_path / "teamB" / "outputs" / "run-30").mkdir(parents=True)  # what the 2nd content reaches here
    returned = snapshot_download("attacker/repo", revision=f"../snapshots/{EVIL_COMMIT}/evil.txt",
                                 cache_dir=teams["b_cache"], local_files_only=True)
    assert not os.path.realpath(returned).startswith(os.path.realpath(teams["b_cache"]))


@BOTH
@pytest.mark.parametrize("content", ["../../../../teamA/outputs/run-30", "../../../outputs/run-30"])
def test_revision_traversal_through_a_downloaded_file_is_refused(teams, which, content):
    (teams["evil"] / "evil.txt").write_text(content)
    message = _refused(which, "attacker/repo", f"../snapshots/{EVIL_COMMIT}/evil.txt",
                       teams["b_cache"], "is not a valid revision", secret=teams["a_run"])
    assert "without '..'" in message


# --- a refs file whose content leads out -------------------------------------------------

@BOTH
@pytest.mark.parametrize("target", ["team_a_run", "team_a_run_absolute", "elsewhere_absolute",
                                    "own_team_outputs", "cache_root"])
def test_a_refs_file_pointing_outside_is_refused(teams, tmp_path, which, target):
    content = {"team_a_run": "../../../../teamA/outputs/run-30",
               "team_a_run_absolute": str(teams["a_run"]),
               "elsewhere_absolute": str(teams["elsewhere"]),
               "own_team_outputs": "../../../outputs",
               "cache_root": "../.."}[target]
    (tmp_path / "teamB" / "outputs").mkdir(exist_ok=True)
    write_ref(teams["b_cache"], "attacker/repo", "main", content)
    _refused(which, "attacker/repo", "main", teams["b_cache"],
             "resolves outside this team's Hub cache; the cache is corrupt or tampered: delete .* "
             "and download .* again", secret=content)


@BOTH
@pytest.mark.parametrize("content", [f"{EVIL_COMMIT}/evil.txt", f"{EVIL_COMMIT}/sub", ".", ""])
def test_a_refs_file_pointing_at_anything_but_a_snapshot_folder_is_refused(teams, which, content):
    (teams["evil"] / "evil.txt").write_text("x")
    (teams["evil"] / "sub").mkdir()
    write_ref(teams["b_cache"], "attacker/repo", "main", content)
    _refused(which, "attacker/repo", "main", teams["b_cache"], "resolves outside this team's Hub cache")


# --- links inside the cache that lead out --------------------------------------------------

@BOTH
@pytest.mark.parametrize("revision", ["main", OTHER_COMMIT])
def test_a_snapshot_folder_linking_to_another_teams_outputs_is_refused(teams, which, revision):
    link = teams["b_repo"] / "snapshots" / OTHER_COMMIT
    os.symlink(teams["a_run"], link)
    write_ref(teams["b_cache"], "attacker/repo", "main", OTHER_COMMIT)
    _refused(which, "attacker/repo", revision, teams["b_cache"], "resolves outside this team's Hub cache",
             secret=teams["a_run"])


@BOTH
def test_a_snapshots_folder_or_repo_folder_that_is_a_link_is_refused(teams, tmp_path, family, which):
    # team A has a genuine cached snapshot of acme/private; team B's cache links to it
    fill_cache(teams["a_cache"], "acme/private", family["base"])
    b_repo = repo_dir(teams["b_cache"], "acme/private")
    b_repo.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(repo_dir(teams["a_cache"], "acme/private"), b_repo)
    _refused(which, "acme/private", "main", teams["b_cache"], "resolves outside this team's Hub cache")

    shutil.rmtree(teams["b_repo"] / "snapshots")
    (teams["b_repo"] / "snapshots").symlink_to(repo_dir(teams["a_cache"], "acme/private") / "snapshots")
    write_ref(teams["b_cache"], "attacker/repo", "main", COMMIT)
    _refused(which, "attacker/repo", "main", teams["b_cache"], "resolves outside this team's Hub cache")


@BOTH
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("how", ["absolute", "relative", "via_blobs", "other_repo_blob", "chain"])
def test_a_weight_file_linking_outside_the_repo_cache_is_refused(teams, tmp_path, family, which, name, how):
    snap = fill_cache(teams["b_cache"], "attacker/linked", family["base"], link_blobs=True)
    repo = repo_dir(teams["b_cache"], "attacker/linked")
    victim = teams["a_run"] / name
    (snap / name).unlink()
    if how == "absolute":
        os.symlink(victim, snap / name)
    elif how == "relative":
        os.symlink(os.path.relpath(victim, snap), snap / name)
    elif how == "via_blobs":  # a "blob" that is itself a link out
        os.symlink(victim, repo / "blobs" / "deadbeef")
        os.symlink("../../blobs/deadbeef", snap / name)
    elif how == "other_repo_blob":  # another repo's blob, even in the same team's cache
        other = fill_cache(teams["b_cache"], "acme/other", family["base"], link_blobs=True)
        os.symlink(os.path.realpath(other / name), snap / name)
    else:  # chain: a link to a link in the snapshot to outside
        os.symlink(victim, snap / "innocent.bin")
        os.symlink("innocent.bin", snap / name)
    first = "(innocent.bin|" + name + ")" if how == "chain" else name  # either link is caught first
    message = _refused(which, "attacker/linked", "main", teams["b_cache"],
                       f"{first} links outside this team's Hub cache; the cache is corrupt or tampered",
                       secret=teams["a_run"])
    assert "delete" in message and "download attacker/linked@main again" in message


@BOTH
def test_a_sub_folder_linking_outside_is_refused(teams, family, which):
    snap = fill_cache(teams["b_cache"], "attacker/nested", family["base"], link_blobs=True)
    os.symlink(teams["a_run"], snap / "text_encoder")
    _refused(which, "attacker/nested", "main", teams["b_cache"], "text_encoder links outside")


# --- validation of what reaches huggingface_hub ---------------------------------------------

@pytest.mark.parametrize("revision", [
    "..", "../x", "a/../b", "a/..", "../snapshots/abc/evil.txt", "/etc/passwd", "/main", "-rf",
    "a//b", ".hidden", "a/.b", "x.lock", "a/b.lock", "main/", "main.", "a b", "a~1", "a^", "a:b",
    "a?", "a*", "a[x", "a\\b", "..\\x", "a@{1}", "@", "a" * 201, "a\x00", "a\n", "\tmain", "a\x7f",
    "a\u202eb", COMMIT + "\n", "refs/pr/3/", "refs//pr",
])
def test_invalid_revisions_are_refused(revision, tmp_path):
    assert hf.valid_revision(revision) is False
    for which in ("cached_snapshot", "download"):
        _refused(which, "acme/model", revision, tmp_path / "teamA" / "hf", "is not a valid revision")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/3", COMMIT, "", None, "feature/x-y_z",
                                      "release-2024.01", "v1.0-rc1", "HEAD", "a" * 200, "v1@2", "ü"])
def test_valid_revisions_pass_validation(revision):
    assert hf.valid_revision(revision) is True


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/3", COMMIT, "", None])
def test_valid_revisions_find_their_snapshot(revision, tmp_path, family):
    cache = tmp_path / "teamA" / "hf"
    snap = fill_cache(cache, "acme/model", family["base"], revision=revision or "main")
    assert hf.cached_snapshot("acme/model", revision, cache_dir=cache) == snap
    assert hf.download("acme/model", revision, cache_dir=cache) == snap


@pytest.mark.parametrize("repo_id", ["acme/tiny-base", "gpt2", "Org_1/model.v2", "a" * 96,
                                     "a" * 96 + "/" + "b" * 96, "0/1"])
def test_valid_repo_ids(repo_id):
    assert hf.valid_repo_id(repo_id) is True


@pytest.mark.parametrize("repo_id", [
    "a/b/c", "../etc", "acme/..", "..", "acme/../x", "", None, " acme/x", "acme/x ", "acme/x\n",
    "acme--x/y", "acme/x--y", "acme/x.git", ".acme/x", "acme/-x", "acme/x-", "acme/x.", "ünï/x",
    "acme\\x", "/acme", "acme/", "a" * 97, "acme/x\x00", "models--acme--x", "acme/x/",
])
def test_invalid_repo_ids_are_refused(repo_id, tmp_path):
    assert hf.valid_repo_id(repo_id) is False
    for which in ("cached_snapshot", "download"):
        _refused(which, repo_id, "main", tmp_path / "teamA" / "hf", "is not a Hugging Face repo id")


# --- per-team caches ----------------------------------------------------------------------

def test_a_snapshot_cached_for_team_a_is_not_found_with_team_bs_cache(tmp_path, family):
    a_cache, b_cache = tmp_path / "teamA" / "hf", tmp_path / "teamB" / "hf"
    snap = fill_cache(a_cache, "acme/private", family["base"], link_blobs=True)
    assert hf.cached_snapshot("acme/private", "main", cache_dir=a_cache) == snap
    assert hf.cached_snapshot("acme/private", "main", cache_dir=b_cache) is None
    assert hf.cached_snapshot("acme/private", COMMIT, cache_dir=b_cache) is None
    with pytest.raises(hf.HubError, match="not in the offline cache"):
        hf.download("acme/private", "main", cache_dir=b_cache)
    assert not b_cache.exists() or not any(b_cache.rglob("*.safetensors"))


def test_a_cache_dir_that_is_itself_a_link_still_works(tmp_path, family):
    """A data directory on a linked mount is fine: only links below the team's cache count."""
    real = tmp_path / "mnt" / "teamA-hf"
    snap = fill_cache(real, "acme/model", family["base"], link_blobs=True)
    (tmp_path / "teamA").mkdir()
    os.symlink(real, tmp_path / "teamA" / "hf")
    assert hf.cached_snapshot("acme/model", "main", cache_dir=tmp_path / "teamA" / "hf") == snap
