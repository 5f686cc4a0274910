"""The real stack for the job tests: a worker (``manage.py worker``: a django-q2 cluster and
the watchdog), a web server (gunicorn) and HTTP clients, all against the test database (a file
on SQLite, see tests/conftest.py, or PostgreSQL) and the configured broker."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection

REPO = Path(__file__).resolve().parents[2]
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


def stack_env(**extra: str) -> dict[str, str]:
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
        "MERGEHUB_HEARTBEAT_TIMEOUT": "120",
        "PYTHONUNBUFFERED": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
    env.update(extra)
    return env


class Process:
    """A child process logging to a file, stopped with SIGTERM to its own PID (SIGKILL to its
    process group if it hangs)."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        # its own process group: if SIGTERM does not stop it, SIGKILL takes its children too
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.log_path.name}: exited with {self.proc.returncode}:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_worker(tmp_path: Path, env: dict, module: str | None = None, name: str = "worker") -> Process:
    """``manage.py worker``, or ``python -m MODULE worker`` for a patched manage.py."""
    args = [sys.executable, "-m", module, "worker"] if module else [sys.executable, "manage.py", "worker"]
    return Process(args, env, tmp_path / f"{name}.log")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, env: dict, workers: int = 2, threads: int = 4) -> tuple[Process, str]:
    port = free_port()
    server = Process([sys.executable, "-m", "gunicorn", "mergehub.wsgi", "--bind", f"127.0.0.1:{port}",
                      "--workers", str(workers), "--threads", str(threads), "--timeout", "120"],
                     env, tmp_path / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            urllib.request.urlopen(url + "/login/", timeout=5)
            return server, url
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise AssertionError(f"gunicorn did not answer within 60 s:\n{server.output()}")


def wait_for(predicate, process: Process, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        process.check_alive()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{process.output()}")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie until its parent reaps it: gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class WebClient:
    """A browser-less user of the real server: logs in, submits forms with their CSRF token."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, path: str, data: dict | None = None) -> tuple[int, str, str]:
        """(status, final URL, body); redirects are followed, errors are returned, not raised."""
        body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
        req = urllib.request.Request(self.base_url + path, data=body,
                                     headers={"Referer": self.base_url + path})
        try:
            with self.opener.open(req, timeout=120) as resp:
                return resp.status, resp.url, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.url, err.read().decode(errors="replace")

    def csrf(self, path: str) -> str:
        status, _, html = self.request(path)
        assert status == 200, (path, status, html[:500])
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)

    def login(self, username: str, password: str) -> None:
        token = self.csrf("/login/")
        status, url, html = self.request("/login/", {"csrfmiddlewaretoken": token, "username": username,
                                                     "password": password})
        assert status == 200 and "/login/" not in url, (status, url, html[:500])

    def post_form(self, path: str, fields: dict) -> tuple[int, str, str]:
        return self.request(path, {"csrfmiddlewaretoken": self.csrf(path), **fields})


# --- service restarts (the fault tests; only where MERGEHUB_TEST_RESTART_SERVICES=1, as in CI) --

def may_restart_services() -> bool:
    return os.environ.get("MERGEHUB_TEST_RESTART_SERVICES") == "1"


def restart_redis() -> None:
    """Restart the local Redis as CI runs it (nothing kept on disk): every queued task is lost."""
    url = urllib.parse.urlparse(django_settings.REDIS_URL)
    host, port = url.hostname or "127.0.0.1", str(url.port or 6379)
    subprocess.run(["redis-cli", "-h", host, "-p", port, "shutdown", "nosave"], check=False,
                   capture_output=True, timeout=30)
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", host, "--port", port, "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while subprocess.run(["redis-cli", "-h", host, "-p", port, "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "Redis did not come back within 30 s"
        time.sleep(0.1)


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster: every connection is dropped."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=120)
    connection.close()  # this process's connection died with the server
