"""A MergeHub worker: a django-q2 cluster for one queue, plus the watchdog in this process.

    MERGEHUB_QUEUE=cpu python manage.py worker      # or MERGEHUB_QUEUE=gpu on a GPU host

The queue is chosen by the environment, not a flag, because django-q2 reads its settings when
it is imported. SIGTERM or Ctrl-C stops the cluster (it finishes the task in hand) and then
this process.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django_q.cluster import Cluster

from mergehub.jobs import watchdog


class Command(BaseCommand):
    help = "Run a django-q2 cluster for MERGEHUB_QUEUE and the job watchdog (reaper, lost wake-ups)."

    def handle(self, *args, **options):
        queue = settings.MERGEHUB_QUEUE
        cluster = Cluster()
        cluster.start()  # forks the sentinel before this process opens any database connection
        self.stdout.write(f"worker for queue {queue!r} ({settings.Q_CLUSTER['cluster_name']}); "
                          f"watchdog every {watchdog.interval():.0f} s")
        next_tick = 0.0
        # The cluster's own SIGTERM/SIGINT handler stops the sentinel; then this loop ends.
        while cluster.sentinel is not None and cluster.sentinel.is_alive():
            if time.monotonic() >= next_tick:
                watchdog.tick()
                next_tick = time.monotonic() + watchdog.interval()
            time.sleep(0.2)
