"""50 merge submissions from 8 concurrent clients through the real server (gunicorn) and two
real workers (two clusters, as on two hosts): every submission creates its run, none answers
5xx, every run succeeds, and no run is executed twice. Runs on the stack CI gives it: SQLite +
the ORM broker, or PostgreSQL + Redis."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mergehub.runs.models import MergeRun

from .stack import WebClient, stack_env, start_server, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = MergeRun.Status
SUBMISSIONS, CLIENTS = 50, 8


def merge_form(fam, n: int) -> dict:
    fields = {"name": f"burst-{n}", "method": "task_arithmetic", "base": fam["base"].pk, "budget": "0.5",
              "seed": n, "dtype": "", "out_dtype": ""}
    for expert in fam["experts"]:
        fields[f"expert_{expert.pk}__use"] = "on"
        fields[f"expert_{expert.pk}__weight"] = "0.5"
    return fields


def test_a_burst_of_submissions_loses_nothing(registered_family, alice, tmp_path):
    from django.conf import global_settings
    from django.test import override_settings

    from tests.conftest import PASSWORD

    # the server runs with the site's password hashers, not the tests' fast one (tests/conftest.py)
    with override_settings(PASSWORD_HASHERS=global_settings.PASSWORD_HASHERS):
        alice.set_password(PASSWORD)
        alice.save(update_fields=["password"])
    env = stack_env()
    server, url = start_server(tmp_path, env)
    worker = start_worker(tmp_path, env)
    second_worker = start_worker(tmp_path, env, name="second-worker")
    clients = []
    try:
        for _ in range(CLIENTS):
            client = WebClient(url)
            client.login("alice", PASSWORD)
            clients.append(client)

        def submit(n: int) -> tuple[int, str]:
            status, final_url, body = clients[n % CLIENTS].post_form("/runs/new/", merge_form(registered_family, n))
            return status, final_url if status < 500 else body[:2000]

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(submit, range(SUBMISSIONS)))
        submit_s = time.monotonic() - started
        server_errors = [a for a in answers if a[0] >= 500]
        assert not server_errors, server_errors[:3]
        created = [a for a in answers if a[0] == 200 and re.search(r"/runs/\d+/$", a[1])]
        assert len(created) == SUBMISSIONS, [a for a in answers if a not in created][:3]
        assert MergeRun.objects.count() == SUBMISSIONS

        wait_for(lambda: not MergeRun.objects.filter(status__in=MergeRun.ACTIVE).exists(), worker,
                 "every run to finish", timeout=600)
    finally:
        worker.stop()
        second_worker.stop()
        server.stop()
    outcomes = dict.fromkeys(Status.values, 0)
    for status in MergeRun.objects.values_list("status", flat=True):
        outcomes[status] += 1
    failed = list(MergeRun.objects.exclude(status=Status.SUCCEEDED).values_list("pk", "error")[:3])
    assert outcomes[Status.SUCCEEDED] == SUBMISSIONS, (outcomes, failed, worker.output())
    for run in MergeRun.objects.all():
        starts = [line["msg"] for line in run.log if line["msg"].startswith("started on")]
        assert run.attempts == 1 and len(starts) == 1, (run.pk, run.attempts, starts)
    hosts = set(MergeRun.objects.values_list("worker", flat=True))
    assert len(hosts) >= 2, f"one worker took every run: {hosts}"  # else the test proves nothing
    print(f"\n{SUBMISSIONS} submissions from {CLIENTS} clients in {submit_s:.1f} s: {outcomes}; "
          f"run by {len(hosts)} worker processes, each run once")
