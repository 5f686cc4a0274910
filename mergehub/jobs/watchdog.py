"""The watchdog: what keeps jobs honest when workers die and brokers forget.

Every ``manage.py worker`` runs one in its main process, beside (not inside) the django-q2
cluster, so it never waits behind a long job: each tick it reaps stale jobs (reaper.py) and
re-sends lost wake-ups (dispatch.ensure_wakeups). Several workers running it at once is safe:
every write it makes is conditional.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError, connection

from .dispatch import ensure_wakeups
from .reaper import reap_stale_jobs

log = logging.getLogger(__name__)


def interval() -> float:
    """Seconds between ticks: a quarter of the heartbeat timeout (at most 30 s), so a dead
    worker's job is settled, and a lost wake-up re-sent, well within 2 x the timeout."""
    return max(0.5, min(30.0, settings.MERGEHUB_HEARTBEAT_TIMEOUT / 4))


def tick() -> dict:
    """One round; a database or broker outage is logged and the next round tries again."""
    try:
        return {"reaped": reap_stale_jobs(), "woken": ensure_wakeups()}
    except DatabaseError:
        log.warning("watchdog: the database is unavailable; trying again in %.0f s", interval(), exc_info=True)
        connection.close()
    except Exception:
        log.exception("watchdog round failed; trying again in %.0f s", interval())
    return {}
