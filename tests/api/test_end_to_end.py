"""The API end to end: a real web server (pytest-django's live server), a real worker process
(``manage.py worker``, tests/jobs/stack.py) and ``mergehub remote`` run as a command, as a user
runs it.

1. submit a mergekit YAML with ``--wait``: the worker merges it, the command reports it;
   the API's report; the run's config.yaml submitted again merges bit-identically.
2. Ctrl-C while waiting leaves the run going; ``status`` shows it running; ``cancel`` stops it
   at its next block; ``status --wait`` then exits 3 (cancelled).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from django_q.conf import Conf

from mergehub.runs.models import MergeRun
from tests.jobs.stack import REPO, stack_env, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DARE = ("merge_method: dare_ties\nbase_model: base\nmodels:\n"
        "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
        "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")
COMMAND_TIMEOUT = 300


def mergehub_remote(url: str, token: str, *args, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """``mergehub remote ARGS`` as a separate process with MERGEHUB_URL and MERGEHUB_TOKEN set.
    With ``popen=True``: the Popen, still running; else the finished process."""
    env = {**os.environ, "MERGEHUB_URL": url, "MERGEHUB_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "mergehub.engine.cli", "remote", *map(str, args)]
    if popen.pop("popen", False):
        # Ctrl-C's default restored: a test run started in the background inherits SIGINT ignored,
        # and Python then never raises KeyboardInterrupt in the child
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def api_get(url: str, token: str, path: str) -> tuple[str, str]:
    """(content type, body) of GET /api/v1/PATH."""
    request = urllib.request.Request(f"{url}/api/v1/{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers.get_content_type(), response.read().decode()


def queued_id(stdout: str) -> int:
    return int(re.match(r"queued run (\d+)", stdout).group(1))


@pytest.fixture
def write_token(registered_family, carol, acme, make_token) -> str:
    return make_token(carol, acme, write=True, name="end to end")[1]


def test_submit_wait_report_export_and_resubmit_bit_identically(live_server, write_token, tmp_path, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)  # queued jobs go to the broker, for the worker
    url = live_server.url
    config = tmp_path / "dare.yaml"
    config.write_text(DARE)
    worker = start_worker(tmp_path, stack_env())
    try:
        first = mergehub_remote(url, write_token, "submit", config, "--budget", "0.5", "--seed", "11",
                                "--name", "end to end", "--wait", "--interval", "0.2")
        assert first.returncode == 0, (first.stdout, first.stderr, worker.output())
        first_id = queued_id(first.stdout)
        assert re.search(rf"^run {first_id} succeeded in [\d.]+ s: end to end$", first.stdout, re.M), first.stdout
        assert re.search(r"^expert bytes: planned .+ of .+, read from storage ", first.stdout, re.M)

        # the report, through the API
        kind, body = api_get(url, write_token, f"runs/{first_id}/")
        report = json.loads(body)
        assert kind == "application/json" and report["status"] == "succeeded" and report["error"] == ""
        assert report["worker"] and not report["worker"].endswith(f":{os.getpid()}")  # merged by the worker
        assert report["metrics"]["expert_bytes_read"] <= report["metrics"]["budget_bytes"]
        assert f"output: {report['output_path']}" in first.stdout

        # the run as YAML, submitted again as it is (its mergehub: section carries budget and seed)
        kind, exported = api_get(url, write_token, f"runs/{first_id}/config.yaml")
        assert kind == "text/yaml" and "merge_method: dare_ties" in exported and "seed: 11" in exported
        again_config = tmp_path / f"run-{first_id}.yaml"
        again_config.write_text(exported)
        second = mergehub_remote(url, write_token, "submit", again_config, "--wait", "--interval", "0.2")
        assert second.returncode == 0, (second.stdout, second.stderr, worker.output())
        second_id = queued_id(second.stdout)
    finally:
        worker.stop()

    runs = {run.pk: run for run in MergeRun.objects.filter(pk__in=[first_id, second_id])}
    one, two = runs[first_id], runs[second_id]
    assert one.status == two.status == "succeeded", (one.error, two.error)
    assert (two.budget, two.seed, two.block_size) == ("0.5", 11, one.block_size)
    assert two.manifest["plan"]["digest"] == one.manifest["plan"]["digest"]
    assert two.manifest["outputs"]["files"] == one.manifest["outputs"]["files"]  # output hashes
    assert two.output_path != one.output_path


def test_ctrl_c_status_and_cancel_of_a_running_merge(live_server, write_token, tmp_path, monkeypatch):
    """A worker whose merge pauses 0.5 s at each of its ~20 progress reports (tests/jobs/
    fault_worker.py) keeps the run running long enough to interrupt the waiting and cancel it."""
    monkeypatch.setattr(Conf, "SYNC", False)
    url = live_server.url
    config = tmp_path / "dare.yaml"
    config.write_text(DARE)
    worker = start_worker(tmp_path, stack_env(MERGEHUB_TEST_PROGRESS_DELAY="0.5"), module="tests.jobs.fault_worker")
    try:
        waiting = mergehub_remote(url, write_token, "submit", config, "--budget", "0.5", "--wait",
                                  "--interval", "0.2", popen=True)
        assert waiting.stdout.readline().startswith("queued run ")  # the server has answered
        run = wait_for(lambda: MergeRun.objects.filter(status="running", progress__gt=0).first(), worker,
                       "the merge to be under way")
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 130, (out, err)
        assert err.splitlines()[-1] == (f"mergehub: stopped waiting; run {run.pk} goes on on the server. Follow "
                                        f"it with `mergehub remote status {run.pk} --wait`, or cancel it with "
                                        f"`mergehub remote cancel {run.pk}`")

        status = mergehub_remote(url, write_token, "status", run.pk)
        assert status.returncode == 0 and status.stdout.startswith(f"run {run.pk} running ("), status.stdout

        cancel = mergehub_remote(url, write_token, "cancel", run.pk)
        assert cancel.returncode == 0 and "cancel requested; it stops at its next block" in cancel.stdout

        settled = mergehub_remote(url, write_token, "status", run.pk, "--wait", "--interval", "0.2")
        assert settled.returncode == 3, (settled.stdout, settled.stderr, worker.output())
        assert settled.stdout.startswith(f"run {run.pk} cancelled")
    finally:
        worker.stop()
    assert MergeRun.objects.get(pk=run.pk).status == "cancelled"
