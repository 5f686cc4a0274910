import pytest

from mergehub.registry import hf
from mergehub.registry.roots import hf_cache_dir
from tests.fixtures.family import make_family
from tests.registry.hf_cache import fill_cache


@pytest.fixture
def cached_repo(settings, tmp_path_factory):
    fam = make_family(tmp_path_factory.mktemp("hub"), experts=1)
    return fill_cache(hf_cache_dir(), "acme/tiny-base", fam["base"])


@pytest.mark.parametrize("repo_id,ok", [("acme/tiny-base", True), ("gpt2", True), ("a/b/c", False),
                                        ("../etc", False), ("acme/..", False), ("", False),
                                        ("bad name/x", False)])
def test_repo_id_validation(repo_id, ok):
    assert hf.valid_repo_id(repo_id) is ok


def test_cached_snapshot_found_without_network(cached_repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.cached_snapshot("acme/tiny-base", "main") == cached_repo
    assert hf.cached_snapshot("acme/tiny-base", "") == cached_repo
    assert hf.cached_snapshot("acme/other", "main") is None


def test_offline_download_uses_the_cache(cached_repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.download("acme/tiny-base", None) == cached_repo


def test_offline_download_of_an_uncached_repo_says_so(settings, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hf.HubError, match="not in the offline cache and HF_HUB_OFFLINE is set"):
        hf.download("acme/missing", "v1")


def test_online_download_passes_cache_dir_and_patterns(settings, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snap")

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    assert hf.download("acme/tiny", "v2") == tmp_path / "snap"
    repo_id, kwargs = calls[0]
    assert repo_id == "acme/tiny" and kwargs["revision"] == "v2"
    assert kwargs["cache_dir"] == hf_cache_dir() and kwargs["local_files_only"] is False
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.bin" not in kwargs["allow_patterns"]


def test_hub_errors_become_one_line_messages(settings, monkeypatch):
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
        hf.download("acme/nothing", None)
    assert "\n" not in str(exc.value)
