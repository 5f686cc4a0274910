"""A small client of MergeHub's REST API (/api/v1/, docs/api.md), on the standard library.

    client = Client.from_env()              # MERGEHUB_URL and MERGEHUB_TOKEN
    queued, replayed = client.submit_run(yaml_text, budget="0.1", idempotency_key=str(uuid.uuid4()))
    run = client.get_run(queued["id"])      # status, stage, progress, plan, metrics, manifest, ...

Every failure is a ``RemoteError`` whose ``str()`` is one line for the user: ``SetupError``
(the environment), ``ConnectionFailed`` (no server, or the connection broke) and ``ApiError``
(an error answer: 400 with the field errors, 401, 403, 404, 429 with when to retry, 5xx).

Retries: a request is sent again (up to ``retries`` times, waiting ``backoff``, then twice as
long each time) after a connection error or a 502/503/504 when that cannot do anything twice:
reads, and POSTs that carry an Idempotency-Key (the server answers a repeated key with the run
the first request queued). Other POSTs (cancel) are retried only when the connection was
refused, i.e. the request never reached the server. Redirects are not followed: the token is
never sent anywhere but MERGEHUB_URL.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

URL_VARIABLE = "MERGEHUB_URL"
TOKEN_VARIABLE = "MERGEHUB_TOKEN"
API_PREFIX = "/api/v1/"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "mergehub-remote/1"
RETRY_STATUSES = (502, 503, 504)  # a proxy in front of a server that is down or restarting
TOKEN_HINT = ("create a token on your team's API tokens page (/teams/<slug>/tokens/) or with "
              "`manage.py create_api_token --write`")


# --- errors -----------------------------------------------------------------------------------

class RemoteError(Exception):
    """A request that did not get the answer it needed. ``str()``: one line for the user."""


class SetupError(RemoteError):
    """MERGEHUB_URL or MERGEHUB_TOKEN is missing or unusable."""


class ConnectionFailed(RemoteError):
    """No answer: the server could not be reached, or the connection broke or timed out.

    ``sent`` is False when the request certainly never reached the server (connection refused,
    unknown host), so that even a request that is not idempotent may be sent again."""

    def __init__(self, message: str, *, sent: bool):
        super().__init__(message)
        self.sent = sent


class ApiError(RemoteError):
    """An error answer (4xx or 5xx). ``body`` is the decoded JSON (usually ``{"detail": …}`` or
    ``{"field": ["message", …]}``) or the text of a non-JSON answer; ``retry_after`` the
    seconds a 429 asks to wait (None when it does not say)."""

    def __init__(self, status: int, body: Any, *, what: str = "", retry_after: int | None = None,
                 json_answer: bool = True):
        self.status, self.body, self.what, self.retry_after = status, body, what, retry_after
        self.json_answer = json_answer
        super().__init__(self._message())

    @property
    def detail(self) -> str:
        """The server's own words: its ``detail``, else every field's messages, one line."""
        if isinstance(self.body, Mapping):
            if set(self.body) == {"detail"}:
                return str(self.body["detail"])
            return field_errors(self.body)
        return ""

    def _message(self) -> str:
        status, detail = self.status, self.detail
        said = f": {detail}" if detail else ""  # ends the line
        said_then = f": {detail.rstrip('.')}" if detail else ""  # more follows
        if not self.json_answer and status in (400, 401, 403, 404, 405):
            return (f"{status} from a page that is not MergeHub's API; check {URL_VARIABLE} (the site's root "
                    "address, e.g. http://127.0.0.1:8000)")
        if status == 400:
            return f"the server refused the request (400){said}"
        if status == 401:
            return f"the server refused the token in {TOKEN_VARIABLE} (401){said_then}; {TOKEN_HINT}"
        if status == 403:
            return f"not allowed (403){said}"
        if status == 404:
            subject = self.what or "not found"
            return (f"{subject} not found (404){said_then}; check the id, and that {TOKEN_VARIABLE} is a "
                    "token of its team (other teams' objects answer 404 too)")
        if status == 429:
            return f"too many requests (429){said_then}; {retry_hint(self.retry_after)}"
        if status >= 500:
            reason = http.client.responses.get(status, "server error")
            return f"the server failed ({status} {reason}){said_then}; try again later, or see the server's log"
        return f"unexpected answer {status}{said}"


def field_errors(body: Mapping) -> str:
    """``{"config": ["a", "b"], "budget": ["c"]}`` → ``config: a b; budget: c`` (``detail`` and
    ``non_field_errors`` without their key)."""
    parts = []
    for key, messages in body.items():
        text = " ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
        parts.append(text if key in ("detail", "non_field_errors") else f"{key}: {text}")
    return "; ".join(parts)


def retry_hint(seconds: int | None, now: datetime | None = None) -> str:
    if seconds is None:
        return "wait a while before trying again"
    at = (now or datetime.now()) + timedelta(seconds=seconds)
    return f"retry in {seconds} s (after {at:%H:%M:%S})"


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(timezone.utc)
    return max(0, int((when - now).total_seconds() + 0.999))


# --- settings ---------------------------------------------------------------------------------

def site_url(text: str | None) -> str:
    """The site's root address from MERGEHUB_URL: ``http(s)://host[:port][/prefix]``, without a
    trailing slash (a trailing ``/api/v1`` is taken off too)."""
    text = (text or "").strip()
    if not text:
        raise SetupError(f"{URL_VARIABLE} is not set: set it to the MergeHub site's address, "
                         f"e.g. export {URL_VARIABLE}=http://127.0.0.1:8000")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"{URL_VARIABLE}={text!r} is not an http:// or https:// address, "
                         "e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX.rstrip("/")):
        path = path[: -len(API_PREFIX.rstrip("/"))]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_token(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise SetupError(f"{TOKEN_VARIABLE} is not set: set it to an API token (mh_…); {TOKEN_HINT}")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise SetupError(f"{TOKEN_VARIABLE} is not a token: a token is one word of printable ASCII, mh_…")
    return text


# --- the client -------------------------------------------------------------------------------

@dataclass
class Answer:
    """A successful answer: status, headers and body (decoded JSON, or text)."""

    status: int
    headers: Mapping[str, str]
    body: Any = field(default=None)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is answered as it is (an ApiError naming where it points), never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Client:
    """MergeHub's API at ``base_url`` (the site's root), authenticated with ``token``."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep):
        self.base_url, self.token = site_url(base_url), check_token(token)
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self._opener = urllib.request.build_opener(_NoRedirects)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options) -> Client:
        """A client configured by MERGEHUB_URL and MERGEHUB_TOKEN (SetupError if either is unusable)."""
        environ = os.environ if environ is None else environ
        url = site_url(environ.get(URL_VARIABLE))  # the URL's error first: it is the first thing to set
        return cls(url, environ.get(TOKEN_VARIABLE, ""), **options)

    def api_url(self, path: str) -> str:
        """``runs/3/`` → ``http://host/api/v1/runs/3/``."""
        return self.base_url + API_PREFIX + path.lstrip("/")

    def page_url(self, path: str) -> str:
        """A web page of the site: ``runs/3/`` → ``http://host/runs/3/``."""
        return f"{self.base_url}/{path.lstrip('/')}"

    # --- requests -------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None, what: str = "", expect_json: bool = True) -> Answer:
        """Send ``method path`` (``body`` as JSON) and return the answer; RemoteError otherwise.

        ``idempotent``: whether sending it twice is harmless (default: GET only). ``what`` names
        the object in a 404's message ("run 3")."""
        if idempotent is None:
            idempotent = method == "GET"
        attempt = 0
        while True:
            try:
                return self._send(method, path, body, headers or {}, what, expect_json)
            except ConnectionFailed as err:
                retry = idempotent or not err.sent
                failure = err
            except ApiError as err:
                retry = idempotent and err.status in RETRY_STATUSES
                failure = err
            if not retry or attempt >= self.retries:
                raise failure
            self.sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def _send(self, method: str, path: str, body: Any, headers: Mapping[str, str], what: str,
              expect_json: bool) -> Answer:
        url = self.api_url(path)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json" if expect_json else "*/*")
        request.add_header("User-Agent", USER_AGENT)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in headers.items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                content, answer_headers = response.read(), response.headers
                return Answer(response.status, answer_headers, self._decode(content, answer_headers, expect_json, url))
        except urllib.error.HTTPError as err:
            raise self._error(err, what) from None
        except urllib.error.URLError as err:
            raise self._connection_failed(err.reason, url) from None
        except (OSError, http.client.HTTPException) as err:  # broke or timed out mid-answer
            raise self._connection_failed(err, url) from None

    def _decode(self, content: bytes, headers, expect_json: bool, url: str) -> Any:
        text = content.decode("utf-8", errors="replace")
        if not expect_json:
            return text
        if headers.get_content_type() != "application/json":
            raise RemoteError(f"{url} answered {headers.get_content_type()}, not MergeHub's JSON; check "
                              f"{URL_VARIABLE} (the site's root address, e.g. http://127.0.0.1:8000)")
        try:
            return json.loads(text)
        except ValueError:
            raise RemoteError(f"{url} answered malformed JSON; is {URL_VARIABLE} a MergeHub site?") from None

    def _error(self, err: urllib.error.HTTPError, what: str) -> RemoteError:
        if 300 <= err.code < 400:
            where = err.headers.get("Location", "elsewhere")
            return RemoteError(f"the server redirected {err.url} to {where}; set {URL_VARIABLE} to the address "
                               "it redirects to (the token is not sent to another address)")
        try:
            text = err.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            text = ""
        is_json = err.headers.get_content_type() == "application/json"
        body: Any = text
        if is_json:
            try:
                body = json.loads(text)
            except ValueError:
                is_json = False
        return ApiError(err.code, body, what=what, retry_after=parse_retry_after(err.headers.get("Retry-After")),
                        json_answer=is_json)

    def _connection_failed(self, reason: Any, url: str) -> ConnectionFailed:
        where = self.base_url
        if isinstance(reason, ConnectionRefusedError):
            return ConnectionFailed(f"cannot connect to {where}: connection refused; is the MergeHub server "
                                    f"running, and is {URL_VARIABLE} right?", sent=False)
        if isinstance(reason, socket.gaierror):
            return ConnectionFailed(f"cannot connect to {where}: unknown host; check {URL_VARIABLE}", sent=False)
        if isinstance(reason, ssl.SSLError):
            return ConnectionFailed(f"cannot connect to {where}: TLS failed ({reason})", sent=False)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return ConnectionFailed(f"no answer from {where} within {self.timeout:g} s", sent=True)
        detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return ConnectionFailed(f"the connection to {where} failed: {detail}", sent=True)

    # --- the API's resources --------------------------------------------------------------

    def submit_run(self, config: str, *, idempotency_key: str, budget: str | None = None, name: str | None = None,
                   seed: int | None = None, measure_deviation: bool = False,
                   evaluate_tasks: list[str] | None = None) -> tuple[dict, bool]:
        """POST runs/: queue a merge of the mergekit YAML ``config``. (``{"id", "status", "url"}``,
        replayed): replayed is True when an earlier request with this key had queued it."""
        body: dict[str, Any] = {"config": config}
        if budget is not None:
            body["budget"] = budget
        if name is not None:
            body["name"] = name
        if seed is not None:
            body["seed"] = seed
        if measure_deviation:
            body["measure_deviation"] = True
        if evaluate_tasks:
            body["evaluate_tasks"] = [int(t) if t.isdigit() else t for t in evaluate_tasks]
        answer = self.request("POST", "runs/", body=body, headers={IDEMPOTENCY_HEADER: idempotency_key},
                              idempotent=True)
        return answer.body, answer.status == 200

    def get_run(self, run_id: int) -> dict:
        """GET runs/{id}/: status, stage, progress, plan, metrics, error, manifest, evaluation."""
        return self.request("GET", f"runs/{run_id}/", what=f"run {run_id}").body

    def cancel_run(self, run_id: int) -> dict:
        """POST runs/{id}/cancel/: a queued run is cancelled at once, a running one at its next block."""
        return self.request("POST", f"runs/{run_id}/cancel/", what=f"run {run_id}").body

    def run_config_yaml(self, run_id: int) -> str:
        """GET runs/{id}/config.yaml: the run as mergekit YAML, to submit again."""
        return self.request("GET", f"runs/{run_id}/config.yaml", what=f"run {run_id}", expect_json=False).body

    def get_evaluation(self, evaluation_id: int) -> dict:
        """GET evaluations/{id}/: status, stage, progress and scores of an evaluation."""
        return self.request("GET", f"evaluations/{evaluation_id}/", what=f"evaluation {evaluation_id}").body
