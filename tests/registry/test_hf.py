import pytest

from mergehub.registry import hf
from tests.fixtures.family import make_family
from tests.registry.hf_cache import COMMIT, fill_cache


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "teamA" / "hf"


@pytest.fixture
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("hub"), experts=1)


@pytest.fixture
def cached_repo(cache_dir, family):
    return fill_cache(cache_dir, "acme/tiny-base", family["base"])


@pytest.mark.parametrize("repo_id,ok", [("acme/tiny-base", True), ("gpt2", True), ("a/b/c", False),
                                        ("../etc", False), ("acme/..", False), ("", False),
                                        ("bad name/x", False), (None, False)])
def test_repo_id_validation(repo_id, ok):
    assert hf.valid_repo_id(repo_id) is ok


def test_cached_snapshot_found_without_network(cached_repo, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.cached_snapshot("acme/tiny-base", "main", cache_dir=cache_dir) == cached_repo
    assert hf.cached_snapshot("acme/tiny-base", "", cache_dir=cache_dir) == cached_repo
    assert hf.cached_snapshot("acme/tiny-base", None, cache_dir=cache_dir) == cached_repo
    assert hf.cached_snapshot("acme/other", "main", cache_dir=cache_dir) is None


def test_real_hub_layout_with_blob_links_is_accepted(cache_dir, family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = fill_cache(cache_dir, "acme/linked", family["base"], link_blobs=True)
    assert (snap / "config.json").is_symlink()
    assert hf.cached_snapshot("acme/linked", "main", cache_dir=cache_dir) == snap
    assert hf.download("acme/linked", "main", cache_dir=cache_dir) == snap


def test_offline_download_uses_the_cache(cached_repo, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.download("acme/tiny-base", None, cache_dir=cache_dir) == cached_repo
    assert hf.download("acme/tiny-base", COMMIT, cache_dir=cache_dir) == cached_repo


def test_offline_download_of_an_uncached_repo_says_so(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hf.HubError, match="not in the offline cache and HF_HUB_OFFLINE is set"):
        hf.download("acme/missing", "v1", cache_dir=cache_dir)


def test_online_download_passes_cache_dir_and_patterns(cache_dir, family, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    snap = fill_cache(cache_dir, "acme/tiny", family["base"], revision="v2")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snap)

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    assert hf.download("acme/tiny", "v2", cache_dir=cache_dir) == snap
    repo_id, kwargs = calls[0]
    assert repo_id == "acme/tiny" and kwargs["revision"] == "v2"
    assert kwargs["cache_dir"] == cache_dir and kwargs["local_files_only"] is False
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.bin" not in kwargs["allow_patterns"]


def test_online_download_returning_a_path_outside_the_cache_is_refused(cache_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "snap").mkdir()
    monkeypatch.setattr(hf, "snapshot_download", lambda repo_id, **kw: str(tmp_path / "snap"))
    with pytest.raises(hf.HubError, match="resolves outside this team's Hub cache"):
        hf.download("acme/tiny", "v2", cache_dir=cache_dir)


def test_hub_errors_become_one_line_messages(cache_dir, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)

    class Response:  # the bits of an HTTP response the error reads
        status_code = 404
        headers: dict = {}
        request = None

    def missing(repo_id, **kwargs):
        raise RepositoryNotFoundError("404", response=Response())

    monkeypatch.setattr(hf, "snapshot_download", missing)
    with pytest.raises(hf.HubError, match="no such repository") as exc:
        hf.download("acme/nothing", None, cache_dir=cache_dir)
    assert "\n" not in str(exc.value)
