"""One catalog for the web app and the ``mergehub`` command line: both find it from the same
environment (MERGEHUB_CATALOG, else MERGEHUB_DATA_DIR/catalog; mergehub/engine/locations.py),
so a plan or a merge from the command line, run with the web app's environment, reuses what the
web app indexed instead of indexing again. Wherever the catalog lies, no team registers it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ValidationError

from mergehub.engine import cli
from mergehub.engine.locations import default_catalog_dir
from mergehub.registry.roots import catalog_dir, resolve_checkpoint_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def web_environment(settings, monkeypatch):
    """The environment the web app runs with, as the command line sees it: the data directory
    and block size of the test settings, no MERGEHUB_CATALOG."""
    monkeypatch.delenv("MERGEHUB_CATALOG", raising=False)
    monkeypatch.setenv("MERGEHUB_DATA_DIR", str(settings.MERGEHUB_DATA_DIR))
    monkeypatch.setenv("MERGEHUB_BLOCK_SIZE", str(settings.MERGEHUB_BLOCK_SIZE))
    return settings


def test_the_web_app_and_the_command_line_name_the_same_directory(web_environment, tmp_path, monkeypatch):
    settings = web_environment
    assert catalog_dir() == default_catalog_dir() == settings.MERGEHUB_DATA_DIR / "catalog"
    elsewhere = tmp_path / "shared-catalog"
    settings.MERGEHUB_CATALOG = str(elsewhere)  # what MERGEHUB_CATALOG=... gives the web app
    monkeypatch.setenv("MERGEHUB_CATALOG", str(elsewhere))  # ... and the command line
    assert catalog_dir() == default_catalog_dir() == elsewhere


def test_without_a_data_dir_the_command_line_keeps_its_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MERGEHUB_CATALOG", raising=False)
    monkeypatch.delenv("MERGEHUB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_catalog_dir() == tmp_path / "cache" / "mergehub" / "catalog"


def _catalog_state(directory: Path) -> dict[str, int]:
    """Every file of the catalog with its modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def _config(tmp_path: Path, registered_family) -> Path:
    """A mergekit YAML over the registered checkpoints' directories, as a person would write it."""
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic",
        "base_model": registered_family["base"].path,
        "models": [{"model": e.path, "parameters": {"weight": 0.5}} for e in registered_family["experts"]],
    }))
    return path


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_reuses_what_the_web_app_indexed(web_environment, registered_family, tmp_path, capsys):
    # registered_family indexed both experts through the registry service (the web's index jobs)
    assert all(e.index_status == "ready" for e in registered_family["experts"])
    catalog = catalog_dir()
    indexed_by_the_web = _catalog_state(catalog)
    assert len([name for name in indexed_by_the_web if name.endswith(".json")]) == 2
    config = _config(tmp_path, registered_family)

    status, out, err = _cli(capsys, "plan", config, "--budget", "0.5")
    assert status == 0, err
    assert "indexed" not in out + err and "budget 0.5: planned" in out

    status, out, err = _cli(capsys, "merge", config, tmp_path / "merged")
    assert status == 0, err
    assert "indexed" not in out and "merged task_arithmetic into" in out
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert _catalog_state(catalog) == indexed_by_the_web  # nothing written, nothing rebuilt


def test_another_catalog_would_have_been_indexed_again(web_environment, registered_family, tmp_path, capsys,
                                                       monkeypatch):
    """The control for the test above: with a catalog of its own the same plan indexes first,
    and says so."""
    monkeypatch.setenv("MERGEHUB_CATALOG", str(tmp_path / "cli-only"))
    status, out, err = _cli(capsys, "plan", _config(tmp_path, registered_family))
    assert status == 0, err
    assert "indexed the experts missing from the catalog first" in out
    assert len(list((tmp_path / "cli-only").glob("*.json"))) == 2


def test_the_catalog_is_never_registrable_wherever_it_lies(settings, tmp_path, acme):
    """tmp_path is a root shared with every team in the tests: a catalog placed under it stays
    out of reach all the same."""
    settings.MERGEHUB_CATALOG = str(tmp_path / "models" / "catalog")
    catalog_dir().mkdir(parents=True)
    with pytest.raises(ValidationError) as exc:
        resolve_checkpoint_dir(str(catalog_dir()), acme)
    assert "is not inside your team's checkpoint roots" in " ".join(exc.value.message_dict["local_path"])
    neighbour = tmp_path / "models" / "llama"
    neighbour.mkdir()
    assert resolve_checkpoint_dir(str(neighbour), acme) == neighbour.resolve()
