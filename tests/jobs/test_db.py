import pytest
from django.db import OperationalError

from mergehub.jobs.db import DatabaseUnavailable, best_effort, retry_db


def flaky(failures: int, value="ok"):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise OperationalError("database is locked")
        return value

    return fn, calls


def test_a_broken_transaction_is_left_to_its_owner(db):
    """Inside a caller's atomic block the connection cannot be reset: the error goes up."""
    fn, calls = flaky(1)
    with pytest.raises(OperationalError):
        retry_db(fn, what="a write", sleep=lambda s: None)
    assert calls["n"] == 1


def test_retry_db_outlasts_a_busy_database(transactional_db):
    fn, calls = flaky(3)
    slept = []
    assert retry_db(fn, what="a write", patience=60, sleep=slept.append) == "ok"
    assert calls["n"] == 4 and slept == [0.2, 0.4, 0.8]


def test_retry_db_gives_up_with_a_clear_error(transactional_db):
    fn, _ = flaky(1000)
    with pytest.raises(DatabaseUnavailable, match="did not accept the final status for 1 s"):
        retry_db(fn, what="the final status", patience=1, sleep=lambda s: None)


def test_best_effort_swallows_database_errors_only(transactional_db):
    fn, _ = flaky(1)
    assert best_effort(fn, what="progress") is None
    assert best_effort(fn, what="progress") == "ok"
    with pytest.raises(ZeroDivisionError):
        best_effort(lambda: 1 / 0, what="a bug")
