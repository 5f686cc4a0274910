"""``python -m tests.jobs.paused_worker qcluster``: manage.py, with every merge made to stop
in the middle of its merge stage until the process is killed (for the SIGKILL test).

When a worker reaches the first merge progress past zero it writes the progress to its run,
writes its PID to $MERGEHUB_TEST_PAUSE_FILE and waits. django-q2 forks its workers, so the
patch made here is in every worker.
"""

import os
import sys
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mergehub.settings")
    import django

    django.setup()
    from django.core.management import execute_from_command_line

    from mergehub.runs.runner import MergeRunner

    marker = Path(os.environ["MERGEHUB_TEST_PAUSE_FILE"])
    original = MergeRunner.on_progress

    def on_progress(self, p):
        original(self, p)
        if p.stage == "merge" and p.done > 0:
            self._write(p, force=True)
            marker.write_text(str(os.getpid()))
            while True:  # hold here, mid-merge, until SIGKILL
                time.sleep(0.05)

    MergeRunner.on_progress = on_progress
    execute_from_command_line(["manage.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
