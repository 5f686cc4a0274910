"""Settings come from the environment, each with a safe default."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from mergehub.settings import env_bool, env_int, env_list, secret_key_file

REPO = Path(__file__).resolve().parents[1]


def test_env_helpers(monkeypatch):
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_LIST", f"a, b{os.pathsep}c,,")
    monkeypatch.setenv("X_BLANK", "  ")
    assert env_bool("X_BOOL") is True and env_bool("X_BLANK", True) is True and env_bool("X_UNSET") is False
    assert env_int("X_INT", 1) == 42 and env_int("X_UNSET", 7) == 7
    assert env_list("X_LIST", []) == ["a", f"b{os.pathsep}c"]
    assert env_list("X_LIST", [], separators="," + os.pathsep) == ["a", "b", "c"]
    assert env_list("X_UNSET", ["d"]) == ["d"]
    monkeypatch.setenv("X_BOOL", "perhaps")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env_bool("X_BOOL")
    monkeypatch.setenv("X_INT", "4.5")
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        env_int("X_INT", 0)


def test_secret_key_file_is_private_and_stable(tmp_path):
    path = tmp_path / "sub" / "secret_key"
    key = secret_key_file(path)
    assert len(key) >= 50 and secret_key_file(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temp file left


def _settings(env: dict) -> dict:
    code = ("import json, mergehub.settings as s; print(json.dumps({'db': s.DATABASES['default']['ENGINE'], "
            "'name': str(s.DATABASES['default']['NAME']), 'q': s.Q_CLUSTER, 'debug': s.DEBUG, "
            "'hosts': s.ALLOWED_HOSTS, 'roots': [str(r) for r in s.MERGEHUB_CHECKPOINT_ROOTS], "
            "'key': s.SECRET_KEY, 'db_options': s.DATABASES['default'].get('OPTIONS', {}), "
            "'queue': s.MERGEHUB_QUEUE, 'queues': s.MERGEHUB_QUEUES}))")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MERGEHUB_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS"))}
    out = subprocess.run([sys.executable, "-c", code], env=base | env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_defaults_are_safe(tmp_path):
    s = _settings({"MERGEHUB_DATA_DIR": str(tmp_path)})
    assert s["debug"] is False and s["hosts"] == ["127.0.0.1", "localhost"]
    assert s["db"] == "django.db.backends.sqlite3" and s["name"] == str(tmp_path / "db.sqlite3")
    assert s["q"]["orm"] == "default" and "redis" not in s["q"]
    assert s["q"]["retry"] > s["q"]["timeout"] == 6 * 3600
    assert s["q"]["max_attempts"] == 1 and s["q"]["ack_failures"] is True and s["q"]["catch_up"] is False
    assert s["roots"] == []  # no root is shared with every team unless a site admin says so
    assert s["key"] == (tmp_path / "secret_key").read_text().strip()
    # SQLite as a real default: WAL, IMMEDIATE transactions, a busy timeout
    assert s["db_options"]["transaction_mode"] == "IMMEDIATE" and s["db_options"]["timeout"] == 30
    assert "journal_mode=WAL" in s["db_options"]["init_command"]
    assert s["queue"] == "cpu" and s["queues"] == ["cpu"] and s["q"]["cluster_name"] == "mergehub-cpu"


def test_a_gpu_worker_serves_the_gpu_queue(tmp_path):
    s = _settings({"MERGEHUB_DATA_DIR": str(tmp_path), "MERGEHUB_QUEUE": "gpu"})
    assert s["q"]["cluster_name"] == "mergehub-gpu" and s["q"]["name"] == "mergehub"
    assert s["queues"] == ["cpu", "gpu"]


def test_production_settings_from_the_environment(tmp_path):
    s = _settings({"MERGEHUB_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres://u:p@db:5432/mh",
                   "REDIS_URL": "redis://cache:6379/1", "MERGEHUB_JOB_TIMEOUT": "60", "MERGEHUB_WORKERS": "3",
                   "MERGEHUB_CHECKPOINT_ROOTS": f"/models{os.pathsep}/more,/third", "SECRET_KEY": "k" * 50,
                   "ALLOWED_HOSTS": "mergehub.example.com"})
    assert s["db"] == "django.db.backends.postgresql" and s["name"] == "mh"
    assert s["q"]["redis"] == "redis://cache:6379/1" and "orm" not in s["q"]
    assert s["q"]["timeout"] == 60 and s["q"]["retry"] > 60 and s["q"]["workers"] == 3
    assert s["roots"] == ["/models", "/more", "/third"]
    assert s["key"] == "k" * 50 and s["hosts"] == ["mergehub.example.com"]
    assert not (tmp_path / "secret_key").exists()
