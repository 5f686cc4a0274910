"""``mergehub remote submit|status|cancel`` against a live server (in-process, django-q2 in sync
mode), and every error the client turns into one line on stderr with exit status 2."""

from __future__ import annotations

import json
import socket

import pytest
from django_q.conf import Conf

from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def writer(carol, acme, make_token):
    return make_token(carol, acme, write=True)[1]


@pytest.fixture
def reader(bob, acme, make_token):
    return make_token(bob, acme)[1]


def test_submit_and_wait_reports_the_merge(registered_family, live_server, writer, config_file, remote):
    rc, out, err = remote("submit", config_file, "--budget", "0.5", "--name", "from the cli", "--seed", "2",
                          "--wait", "--interval", "0.1", url=live_server.url, token=writer)
    run = MergeRun.objects.get()
    assert rc == 0, err
    assert (run.status, run.name, run.budget, run.seed) == ("succeeded", "from the cli", "0.5", 2)
    assert run.idempotency_key, "submit sends a generated Idempotency-Key"
    lines = out.splitlines()
    assert lines[:3] == [f"queued run {run.pk}", f"page: {live_server.url}/runs/{run.pk}/",
                         f"api: {live_server.url}/api/v1/runs/{run.pk}/"]
    assert lines[3].startswith(f"run {run.pk} succeeded in ") and lines[3].endswith(": from the cli")
    assert lines[4].startswith("expert bytes: planned ") and ", read from storage " in lines[4]
    assert f"output: {run.output_path}" in lines
    assert f"run {run.pk}: succeeded" in err  # progress lines (not a terminal: no bar)


def test_submit_without_wait_and_json(registered_family, live_server, writer, config_file, remote):
    rc, out, _ = remote("submit", config_file, "--budget", "0.5", "--json", "--idempotency-key", "fixed",
                        url=live_server.url, token=writer)
    queued = json.loads(out)
    assert rc == 0 and queued["url"] == f"{live_server.url}/api/v1/runs/{queued['id']}/"
    # the same key again: the first run, said to be from the earlier request; no second run
    rc, out, _ = remote("submit", config_file, "--budget", "0.5", "--idempotency-key", "fixed",
                        url=live_server.url, token=writer)
    assert rc == 0 and out.splitlines()[0] == f"queued run {queued['id']} (by an earlier request with this " \
                                              "Idempotency-Key)"
    assert MergeRun.objects.count() == 1


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_run(registered_family, live_server, writer,
                                                                       config_file, remote, lossy_proxy):
    proxy_url, state = lossy_proxy(live_server.url, lose=1)
    rc, out, err = remote("submit", config_file, "--budget", "0.5", url=proxy_url, token=writer)
    assert rc == 0, err
    assert state["posts"] == 2, "the first answer was lost: the client sent the request again"
    keys = [h["Idempotency-Key"] for h in state["headers"]]
    assert len(keys) == 2 and keys[0] == keys[1]
    run = MergeRun.objects.get()  # one run, not two
    assert out.startswith(f"queued run {run.pk} (by an earlier request with this Idempotency-Key)")


def test_submit_wait_json_prints_the_run_alone(registered_family, live_server, writer, config_file, remote):
    rc, out, err = remote("submit", config_file, "--budget", "0.5", "--wait", "--json", "--interval", "0.1",
                          url=live_server.url, token=writer)
    run = json.loads(out)
    assert rc == 0 and run["status"] == "succeeded" and f"queued run {run['id']}" in err


def test_status_text_and_json(registered_family, live_server, writer, reader, config_file, remote):
    remote("submit", config_file, "--budget", "0.5", url=live_server.url, token=writer)
    run = MergeRun.objects.get()
    rc, out, _ = remote("status", run.pk, url=live_server.url, token=reader)  # a read-only token reads
    assert rc == 0 and out.startswith(f"run {run.pk} succeeded in ")
    rc, out, _ = remote("status", run.pk, "--json", url=live_server.url, token=reader)
    body = json.loads(out)
    assert rc == 0 and body["id"] == run.pk and body["manifest"]["outputs"]["files"]


def test_cancel_a_queued_run_then_wait_says_cancelled(registered_family, live_server, writer, config_file, remote,
                                                      monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)  # no worker takes it: it stays queued
    remote("submit", config_file, "--budget", "0.5", url=live_server.url, token=writer)
    run = MergeRun.objects.get()
    rc, out, _ = remote("status", run.pk, url=live_server.url, token=writer)
    assert rc == 0 and out.startswith(f"run {run.pk} queued: ") and "expert bytes: planned " in out
    rc, out, _ = remote("cancel", run.pk, url=live_server.url, token=writer)
    assert rc == 0 and out == f"run {run.pk} cancelled (it had not started)\n"
    rc, out, _ = remote("status", run.pk, "--wait", url=live_server.url, token=writer)
    assert rc == 3 and out.startswith(f"run {run.pk} cancelled") and "nothing was published" in out
    rc, _, err = remote("cancel", run.pk, url=live_server.url, token=writer)
    assert rc == 2 and err == (f"mergehub: error: the server refused the request (400): Run #{run.pk} already "
                               "cancelled; there is nothing to cancel.\n")


def test_a_failed_run_exits_1(registered_family, live_server, writer, config_file, remote, monkeypatch):
    from mergehub.runs import runner

    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runner.MergeRunner, "work", broken)
    rc, out, _ = remote("submit", config_file, "--budget", "0.5", "--wait", "--interval", "0.1",
                        url=live_server.url, token=writer)
    run = MergeRun.objects.get()
    assert run.status == "failed"
    assert rc == 1 and f"run {run.pk} failed" in out and "error: " in out and "disk on fire" in out


# --- errors: one line on stderr, exit status 2 ------------------------------------------------

def one_line_error(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (rc, out, err)
    assert err.startswith("mergehub: error: ")
    return err.strip()


def test_missing_environment(config_file, remote):
    err = one_line_error(*remote("status", 1, url=None, token="mh_x"))
    assert "MERGEHUB_URL is not set" in err and "http://127.0.0.1:8000" in err
    err = one_line_error(*remote("submit", config_file, url="http://127.0.0.1:1", token=None))
    assert "MERGEHUB_TOKEN is not set" in err and "create_api_token" in err
    err = one_line_error(*remote("status", 1, url="127.0.0.1:8000", token="mh_x"))
    assert "is not an http:// or https:// address" in err


def test_connection_refused(config_file, remote, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)  # the retries' back-off
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    err = one_line_error(*remote("submit", config_file, "--budget", "0.5", url=f"http://127.0.0.1:{port}",
                                 token="mh_x"))
    assert err == (f"mergehub: error: cannot connect to http://127.0.0.1:{port}: connection refused; is the "
                   "MergeHub server running, and is MERGEHUB_URL right?")


def test_a_bad_token_is_401(live_server, alice, remote):
    err = one_line_error(*remote("status", 1, url=live_server.url, token="mh_00000000_" + "A" * 43))
    assert "the server refused the token in MERGEHUB_TOKEN (401): Invalid token: unknown, expired or revoked" in err
    assert "create_api_token" in err


def test_a_revoked_token_is_401(live_server, alice, acme, make_token, remote):
    from mergehub.api.tokens import revoke_token

    token, text = make_token(alice, acme)
    revoke_token(token=token, by=alice)
    assert "(401)" in one_line_error(*remote("status", 1, url=live_server.url, token=text))


def test_a_read_only_token_cannot_submit_403(registered_family, live_server, reader, config_file, remote):
    err = one_line_error(*remote("submit", config_file, "--budget", "0.5", url=live_server.url, token=reader))
    assert err == ("mergehub: error: not allowed (403): This token is read-only; create a read-write token to "
                   "make changes.")
    assert not MergeRun.objects.exists()


def test_an_unknown_run_is_404(live_server, writer, remote):
    err = one_line_error(*remote("status", 10**6, url=live_server.url, token=writer))
    assert err == (f"mergehub: error: run {10**6} not found (404): No such run; check the id, and that "
                   "MERGEHUB_TOKEN is a token of its team (other teams' objects answer 404 too)")
    err = one_line_error(*remote("cancel", 10**6, url=live_server.url, token=writer))
    assert f"run {10**6} not found (404)" in err


def test_a_wrong_site_address_says_to_check_the_url(live_server, writer, remote):
    err = one_line_error(*remote("status", 1, url=live_server.url + "/nowhere", token=writer))
    assert "not MergeHub's API; check MERGEHUB_URL" in err


def test_field_errors_are_printed_400(registered_family, live_server, writer, tmp_path, remote):
    config = tmp_path / "bad.yaml"
    config.write_text("merge_method: ties\nbase_model: base\nmodels:\n  - model: nope\n")
    err = one_line_error(*remote("submit", config, "--budget", "lots", url=live_server.url, token=writer))
    assert err.startswith("mergehub: error: the server refused the request (400): ")
    assert "config: models[0].model: 'nope' is not one of your team's checkpoints" in err
    err = one_line_error(*remote("submit", tmp_path / "missing.yaml", url=live_server.url, token=writer))
    assert err == f"mergehub: error: config file {tmp_path / 'missing.yaml'} not found"


def test_throttled_429_says_when_to_retry(registered_family, live_server, writer, remote, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "1/hour", raising=False)
    assert remote("status", 10**6, url=live_server.url, token=writer)[0] == 2  # the one request of the hour
    err = one_line_error(*remote("status", 10**6, url=live_server.url, token=writer))
    assert "too many requests (429): Request was throttled." in err
    assert "retry in 3600 s (after " in err or "retry in 3599 s (after " in err
