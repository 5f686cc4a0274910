"""Run the web server and one worker together until Ctrl-C.

    python manage.py serve_demo [--bind 127.0.0.1:8000]

gunicorn and ``manage.py worker`` (a django-q2 cluster and the job watchdog) run as children in their own sessions, so Ctrl-C reaches
only this launcher, which then sends SIGTERM to each child's own PID and waits for both
(SIGKILL after a grace period). If either child dies, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

GRACE_SECONDS = 20


class Command(BaseCommand):
    help = "Serve MergeHub with gunicorn and run a django-q2 worker; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--username", default="admin", help="shown in the banner only")
        parser.add_argument("--password", default="mergehub-demo", help="shown in the banner only")

    def handle(self, *args, **opts):
        manage = os.path.join(settings.BASE_DIR, "manage.py")
        children = {
            "web": subprocess.Popen([sys.executable, "-m", "gunicorn", "mergehub.wsgi", "--bind", opts["bind"],
                                     "--workers", str(opts["web_workers"]), "--timeout", "120",
                                     "--access-logfile", "-"], cwd=settings.BASE_DIR, start_new_session=True),
            "worker": subprocess.Popen([sys.executable, manage, "worker"], cwd=settings.BASE_DIR,
                                       start_new_session=True),
        }
        stop = {"signal": None}

        def on_signal(signum, frame):
            stop["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        self.stdout.write(self.style.SUCCESS(
            f"\nMergeHub is running at http://{opts['bind']}/  (log in as {opts['username']} / "
            f"{opts['password']}; admin at /admin/). Press Ctrl-C to stop.\n"))
        exited = None
        while stop["signal"] is None and exited is None:
            exited = next((name for name, p in children.items() if p.poll() is not None), None)
            time.sleep(0.2)
        if exited:
            self.stderr.write(f"{exited} exited with status {children[exited].returncode}; stopping the rest.")
        self._stop(children)
        self.stdout.write("Stopped web server and worker.")
        if exited:
            sys.exit(1)

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for p in children.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # the child's own PID only
        deadline = time.monotonic() + GRACE_SECONDS
        for name, p in children.items():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop within {GRACE_SECONDS} s; killing it.")
                p.kill()
                p.wait()
