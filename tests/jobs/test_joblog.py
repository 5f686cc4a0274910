from mergehub.jobs.joblog import append_log
from mergehub.jobs.models import LOG_LIMIT
from mergehub.runs.models import MergeRun


def test_the_log_is_capped_with_a_marker(alice, acme):
    run = MergeRun.objects.create(team=acme, author=alice, name="r", method="ties", config={}, budget="1")
    append_log(MergeRun, run.pk, *[f"line {i}" for i in range(LOG_LIMIT + 50)])
    append_log(MergeRun, run.pk, "last")
    run.refresh_from_db()
    assert len(run.log) == LOG_LIMIT
    assert run.log[0]["msg"] == "… 52 earlier lines dropped"  # 1051 lines, 999 kept + the marker
    assert run.log[-1]["msg"] == "last" and run.log[-2]["msg"] == f"line {LOG_LIMIT + 49}"
