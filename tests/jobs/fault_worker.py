"""``python -m tests.jobs.fault_worker worker``: manage.py with hooks for the fault tests.

- ``$MERGEHUB_TEST_FAULT_DIR/pause_at`` names a point: ``claimed`` (a job was claimed, no work
  done), ``merge`` (mid-merge: the first merge progress past zero, written to the row) or
  ``published`` (the merged model is published, its row not yet told). The first job to reach
  that point writes the worker's PID to ``$MERGEHUB_TEST_FAULT_DIR/reached`` and holds there
  until it is killed; the test removes ``pause_at`` before the next fault.
- ``$MERGEHUB_TEST_PROGRESS_DELAY`` (seconds) slows every progress report, so a tiny merge
  lasts long enough to be killed, or to outlive a database restart, at a random moment.

django-q2 forks its workers from this process, so the patches are in every worker.
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

    from mergehub.jobs.runner import JobRunner
    from mergehub.runs.runner import MergeRunner

    fault_dir = Path(os.environ.get("MERGEHUB_TEST_FAULT_DIR", "/nonexistent"))
    delay = float(os.environ.get("MERGEHUB_TEST_PROGRESS_DELAY", "0"))

    def hold_if(point: str) -> None:
        try:
            wanted = (fault_dir / "pause_at").read_text().strip()
        except OSError:
            return
        reached = fault_dir / "reached"
        if wanted == point and not reached.exists():
            reached.write_text(str(os.getpid()))
            while True:  # until SIGKILL
                time.sleep(0.05)

    execute, on_progress, work = JobRunner.execute, MergeRunner.on_progress, MergeRunner.work

    def execute_hook(self):
        hold_if("claimed")
        return execute(self)

    def on_progress_hook(self, p):
        on_progress(self, p)
        if delay:
            time.sleep(delay)
        if p.stage == "merge" and p.done > 0:
            self._write(p, force=True)
            hold_if("merge")

    def work_hook(self):
        fields = work(self)
        hold_if("published")
        return fields

    JobRunner.execute, MergeRunner.on_progress, MergeRunner.work = execute_hook, on_progress_hook, work_hook
    execute_from_command_line(["manage.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
