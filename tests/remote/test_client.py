"""The API client without Django: settings, retries (what is safe to send twice), redirects,
answers that are not the API's, and the waiting loop's patience with outages and 429s."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime, timezone

import pytest

from mergehub.remote import command, report
from mergehub.remote.client import (ApiError, Client, ConnectionFailed, RemoteError, SetupError, field_errors,
                                    parse_retry_after, site_url)

TOKEN = "mh_0123abcd_" + "x" * 43


@pytest.fixture
def scripted():
    """``scripted([(status, headers, body), …])`` → a Client of a server that gives these answers
    in turn (then the last one again); ``server.seen`` lists (method, path, headers)."""
    servers = []

    def start(answers):
        seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body = answers[min(len(seen), len(answers)) - 1]
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, sleep=lambda s: None)
        return client, seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_site_url_takes_the_sites_root():
    assert site_url(" http://h:8000/ ") == "http://h:8000"
    assert site_url("https://h/mergehub/api/v1/") == "https://h/mergehub"
    for bad in ("", "h:8000", "ftp://h", "http://"):
        with pytest.raises(SetupError):
            site_url(bad)


def test_the_token_is_checked_before_use():
    for bad in ("", "   ", "mh_a b", "mh_é", "mh_a\r\nX-Evil: 1"):
        with pytest.raises(SetupError, match="MERGEHUB_TOKEN"):
            Client("http://h", bad)


def test_error_texts():
    assert field_errors({"config": ["a", "b"], "budget": ["c"], "non_field_errors": ["d"]}) == \
        "config: a b; budget: c; d"
    assert parse_retry_after("30") == 30 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Wed, 01 Jan 2025 12:01:00 GMT", now=now) == 60
    assert str(ApiError(500, "<html>")) == "the server failed (500 Internal Server Error); try again later, or " \
                                           "see the server's log"


def test_reads_are_retried_after_a_bad_gateway(scripted):
    client, seen = scripted([(502, {}, b"bad gateway"), (503, {}, b""), (200, {}, {"id": 3, "status": "queued"})])
    assert client.get_run(3) == {"id": 3, "status": "queued"}
    assert len(seen) == 3 and all(h["Authorization"] == f"Bearer {TOKEN}" for _, _, h in seen)


def test_a_cancel_is_not_sent_twice_once_it_may_have_arrived(scripted):
    client, seen = scripted([(502, {}, b""), (200, {}, {"status": "cancelled"})])
    with pytest.raises(ApiError, match="502"):
        client.cancel_run(3)
    assert len(seen) == 1


def test_submit_sends_its_key_on_every_try(scripted):
    client, seen = scripted([(504, {}, b""), (200, {"Idempotent-Replayed": "true"},
                                               {"id": 7, "status": "queued", "url": "u"})])
    queued, replayed = client.submit_run("merge_method: ties", idempotency_key="k-1", budget="0.5",
                                         evaluate_tasks=["arith", "4"])
    assert queued["id"] == 7 and replayed
    assert [h["Idempotency-Key"] for _, _, h in seen] == ["k-1", "k-1"]


def test_redirects_are_not_followed(scripted):
    client, seen = scripted([(302, {"Location": "https://elsewhere.example/api/v1/runs/3/"}, b"")])
    with pytest.raises(RemoteError, match="redirected .* to https://elsewhere.example/api/v1/runs/3/; set "
                                          "MERGEHUB_URL"):
        client.get_run(3)
    assert len(seen) == 1


def test_an_answer_that_is_not_the_apis(scripted):
    client, _ = scripted([(200, {"Content-Type": "text/html"}, b"<html>a login page</html>")])
    with pytest.raises(RemoteError, match="answered text/html, not MergeHub's JSON; check MERGEHUB_URL"):
        client.get_run(3)


class FakeClient:
    """get_run gives the answers (or raises the errors) in turn."""

    def __init__(self, answers):
        self.answers = list(answers)

    def get_run(self, run_id):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_waiting_rides_out_an_outage_and_a_429(monkeypatch, capsys):
    monkeypatch.setattr(command.time, "sleep", lambda s: None)
    done = {"id": 5, "status": "succeeded", "stage": "done", "progress": 1.0, "name": "n",
            "metrics": {"expert_bytes_read": 4, "expert_bytes_requested": 10, "planned_expert_bytes": 10,
                        "full_expert_bytes": 40},
            "output_path": "/out/run-5",
            "evaluation": {"evaluation": {"id": 2, "status": "succeeded"}, "tasks": ["arith"],
                           "models": [{"label": "run #5", "role": "merge", "scores": [
                               {"task": "arith", "metric": "exact_match", "score": 0.75}]}],
                           "kept": [{"expert": "e1", "task": "arith", "share": 0.9}]}}
    client = FakeClient([{"id": 5, "status": "running", "stage": "merge", "progress": 0.5},
                         ConnectionFailed("the connection to h failed: reset", sent=True),
                         ApiError(429, {"detail": "slow down"}, retry_after=0), done])
    args = type("Args", (), {"interval": 0.01, "json": False})()
    assert command._wait(client, 5, args) == command.EXIT_OK
    out, err = capsys.readouterr()
    assert "run 5: running (merge 50%)" in err and "trying again for up to 120 s" in err and "(429)" in err
    assert out.splitlines() == [
        "run 5 succeeded: n",
        "expert bytes: planned 10 B of 40 B (25.0%), read from storage 4 B (6 B came from the page cache); base "
        "read n/a; written n/a",
        "output: /out/run-5",
        "evaluation 2 succeeded: arith",
        "  run #5 (merge): arith exact_match 0.750",
        "  the merge keeps 90% of e1's score on arith"]


def test_ctrl_c_while_waiting_leaves_the_run_going(monkeypatch, capsys):
    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(command.time, "sleep", interrupt)
    client = FakeClient([{"id": 5, "status": "queued", "stage": "queued", "progress": 0.0}])
    args = type("Args", (), {"interval": 1.0, "json": False})()
    assert command._wait(client, 5, args) == command.EXIT_INTERRUPTED
    _, err = capsys.readouterr()
    assert err.splitlines()[-1] == ("mergehub: stopped waiting; run 5 goes on on the server. Follow it with "
                                    "`mergehub remote status 5 --wait`, or cancel it with `mergehub remote "
                                    "cancel 5`")


def test_the_outcome_decides_the_exit_status():
    evaluation = {"evaluation": {"id": 1, "status": "failed"}}
    assert command._outcome({"status": "succeeded"}) == 0
    assert command._outcome({"status": "failed"}) == 1
    assert command._outcome({"status": "cancelled"}) == 3
    assert command._outcome({"status": "succeeded", "evaluation": evaluation}) == 1
    assert report.state({"status": "running", "stage": "merge", "progress": 0.42, "cancel_requested": True}) == \
        "running (merge 42%); cancel requested"
