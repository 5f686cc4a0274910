"""The real worker: a ``manage.py qcluster`` subprocess against the same database (and the Redis
broker when REDIS_URL is set). The test database is a file (see tests/conftest.py), so the
worker opens exactly what the test committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from mergehub.registry.roots import outputs_dir, run_output_dir
from mergehub.runs import services
from mergehub.runs.models import MergeRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
REPO = Path(__file__).resolve().parents[2]
Status = MergeRun.Status
WAIT_SECONDS = 180


def database_url() -> str:
    """A URL for the database this test process is using (the test database)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if "postgresql" in db["ENGINE"]:
        auth = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "localhost"
        port = f":{db['PORT']}" if db["PORT"] else ""
        return f"postgres://{auth}@{host}{port}/{db['NAME']}"
    pytest.skip(f"no worker test for {db['ENGINE']}")


def worker_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "mergehub.settings",
        "DATABASE_URL": database_url(),
        "SECRET_KEY": django_settings.SECRET_KEY,  # django-q2 signs queued tasks with it
        "MERGEHUB_DATA_DIR": str(django_settings.MERGEHUB_DATA_DIR),
        "MERGEHUB_CHECKPOINT_ROOTS": os.pathsep.join(map(str, django_settings.MERGEHUB_CHECKPOINT_ROOTS)),
        "MERGEHUB_BLOCK_SIZE": str(django_settings.MERGEHUB_BLOCK_SIZE),
        "MERGEHUB_WORKERS": "1",
        "MERGEHUB_JOB_TIMEOUT": "300",
        "PYTHONUNBUFFERED": "1",
    })
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
    return env


class Cluster:
    """A qcluster subprocess, stopped with SIGTERM to its own PID (SIGKILL if it hangs)."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"qcluster exited with {self.proc.returncode}:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_for(predicate, cluster: Cluster, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        cluster.check_alive()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{cluster.output()}")


def queue_run(fam, user, team, monkeypatch) -> MergeRun:
    """Queue a merge on the real broker (sync mode off for this call)."""
    monkeypatch.setattr(Conf, "SYNC", False)
    run = services.create_run(user=user, team=team, name="worker", method="ties", base=fam["base"],
                              experts=[(e, {"weight": 1.0, "density": 0.5}) for e in fam["experts"]],
                              budget="0.5", seed=1)
    run.refresh_from_db()
    assert run.status == Status.QUEUED and run.task_id
    return run


def test_qcluster_takes_a_queued_merge_to_succeeded(registered_family, alice, acme, monkeypatch, tmp_path):
    run = queue_run(registered_family, alice, acme, monkeypatch)
    cluster = Cluster([sys.executable, "manage.py", "qcluster"], worker_env(tmp_path), tmp_path / "qcluster.log")
    try:
        wait_for(lambda: MergeRun.objects.get(pk=run.pk).is_finished, cluster, "the run to finish")
    finally:
        cluster.stop()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, (run.error, cluster.output())
    assert run.progress == 1.0 and run_output_dir(run.pk).is_dir()
    assert any(line["msg"].startswith("started on") for line in run.log)
    assert run.metrics["expert_bytes_read"] <= run.metrics["budget_bytes"]


def test_worker_killed_mid_merge_leaves_a_failed_run_and_no_output(registered_family, alice, acme,
                                                                   monkeypatch, tmp_path):
    pause_file = tmp_path / "paused.pid"
    env = worker_env(tmp_path) | {"MERGEHUB_TEST_PAUSE_FILE": str(pause_file)}
    run = queue_run(registered_family, alice, acme, monkeypatch)
    cluster = Cluster([sys.executable, "-m", "tests.jobs.paused_worker", "qcluster"], env,
                      tmp_path / "qcluster.log")
    try:
        wait_for(pause_file.exists, cluster, "the worker to reach the middle of the merge")
        worker_pid = int(wait_for(lambda: pause_file.read_text().strip(), cluster, "the worker's pid"))
        running = MergeRun.objects.get(pk=run.pk)
        assert running.status == Status.RUNNING and 0 < running.progress < 1
        assert list(outputs_dir().glob(f".run-{run.pk}.staging-*")), "the engine writes into a staging dir"
        assert not run_output_dir(run.pk).exists()
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: _gone(worker_pid), cluster, "the killed worker to disappear", timeout=30)
    finally:
        cluster.stop()

    run.refresh_from_db()
    assert run.status == Status.RUNNING  # nobody told the row: only the heartbeat stopped
    later = timezone.now() + timedelta(seconds=django_settings.MERGEHUB_HEARTBEAT_TIMEOUT + 1)
    assert services.reap_stale_runs(now=later) == 1
    run.refresh_from_db()
    assert run.status == Status.FAILED and "stopped responding" in run.error
    assert not run_output_dir(run.pk).exists()
    assert not list(outputs_dir().glob(f".run-{run.pk}.*")), "the staging directory was left behind"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until its parent reaps it: good enough once its state is Z
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
