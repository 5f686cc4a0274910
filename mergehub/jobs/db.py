"""Database writes a worker must not lose to a busy or restarting database.

SQLite answers "database is locked" past its busy timeout; PostgreSQL drops connections when it
restarts. A worker's final write (succeeded, failed) is retried with patience, closing the
broken connection between tries; progress writes are best effort.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (OperationalError, InterfaceError)


class DatabaseUnavailable(Exception):
    """The database did not accept a write within the patience given."""


def retry_db(fn: Callable[[], T], *, what: str, patience: float = 120.0, sleep=time.sleep) -> T:
    """``fn()``, retried on connection and lock errors for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn()
        except TRANSIENT as err:
            if connection.in_atomic_block:  # a caller's transaction is broken: it must retry
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"the database did not accept {what} for {patience:.0f} s "
                                          f"({err.__class__.__name__}: {err})") from err
            log.warning("%s failed (%s); retrying in %.1f s", what, err, delay)
            try:
                connection.close()  # a dropped connection is reopened on the next query
            except DatabaseError:
                pass
            sleep(delay)
            delay = min(delay * 2, 5.0)


def best_effort(fn: Callable[[], T], *, what: str) -> T | None:
    """``fn()``, or None (logged) when the database is busy or away: for writes whose loss
    costs nothing but a stale progress bar."""
    try:
        return fn()
    except TRANSIENT as err:
        log.warning("%s skipped: %s", what, err)
        try:
            connection.close()
        except DatabaseError:
            pass
        return None
