"""``mergehub remote``: drive a MergeHub server through its REST API (/api/v1/, docs/api.md).

- ``client.py``: a small HTTP client (the standard library's urllib): the token, JSON in and
  out, retries of what is safe to retry, and one-line errors (``RemoteError``).
- ``report.py``: what the command prints about a run: its status line, progress, the final
  report.
- ``command.py``: the ``remote`` subcommands (submit, status, cancel) and waiting for a run.

This package imports neither Django nor the engine (nor torch): it talks to the API only.
"""
