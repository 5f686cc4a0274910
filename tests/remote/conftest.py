"""Fixtures for ``mergehub remote`` tests: the command run in-process against pytest-django's live
server (django-q2 in sync mode: a merge runs inside the request that queues it), and a proxy
that loses answers, to play a network blip."""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse

import pytest

from mergehub.engine import cli
from tests.api.conftest import fresh_cache, make_token  # noqa: F401  (the API tests' fixtures)

TIES = ("merge_method: ties\nbase_model: base\nmodels:\n"
        "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
        "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "ties.yaml"
    path.write_text(TIES)
    return path


@pytest.fixture
def remote(monkeypatch, capsys):
    """``remote(*args, url=…, token=…)`` → (exit status, stdout, stderr) of ``mergehub remote
    ARGS`` run in-process with MERGEHUB_URL and MERGEHUB_TOKEN set (unset where None)."""

    def run(*args, url: str | None, token: str | None) -> tuple[int, str, str]:
        for name, value in (("MERGEHUB_URL", url), ("MERGEHUB_TOKEN", token)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            rc = cli.main(["remote", *map(str, args)])
        except SystemExit as exc:  # argparse
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def lossy_proxy():
    """``lossy_proxy(target_url, lose=1)`` → the proxy's URL. It forwards every request to
    ``target_url`` but drops the connection instead of relaying the answer to the first ``lose``
    POSTs: the server did the work, the client never heard. ``proxy.posts`` counts POSTs."""
    servers = []

    def start(target_url: str, lose: int = 1):
        target = urllib.parse.urlsplit(target_url)
        state = {"posts": 0, "headers": []}

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                state["headers"].append(dict(self.headers))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                upstream.request(self.command, self.path, body=body or None,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                answer = upstream.getresponse()
                content = answer.read()
                upstream.close()
                if self.command == "POST":
                    state["posts"] += 1
                    if state["posts"] <= lose:
                        self.close_connection = True  # the answer is lost on the way back
                        return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _forward

        server = _Proxy(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        server.state = state
        return f"http://127.0.0.1:{server.server_address[1]}", state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
