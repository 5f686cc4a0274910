"""``mergehub remote``: submit a merge to a MergeHub server, follow it, cancel it.

    export MERGEHUB_URL=http://127.0.0.1:8000 MERGEHUB_TOKEN=mh_…
    mergehub remote submit CONFIG.yaml --budget 0.1 [--name N] [--seed S] [--wait] [--idempotency-key K]
    mergehub remote status ID [--wait] [--json]
    mergehub remote cancel ID [--json]

``mergehub/engine/cli.py`` registers the parser (``add_remote_parser``) and calls
``run_remote``, which never raises for what the user can fix: it prints one line on stderr and
returns an exit status (EXIT_* below).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from . import report  # the client (urllib, ssl: ~25 ms) is imported when a remote command runs

EXIT_OK = 0
EXIT_FAILED = 1  # the run (or the evaluation it asked for) failed
EXIT_ERROR = 2  # bad input, no server, or the server refused the request
EXIT_CANCELLED = 3  # the run (or its evaluation) was cancelled
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting: the run goes on
DEFAULT_INTERVAL = 2.0
OUTAGE_SECONDS = 120.0  # how long a wait tolerates a server it cannot reach

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}    done (with --wait: the run succeeded)
  {EXIT_FAILED}    the run, or the evaluation it asked for, failed
  {EXIT_ERROR}    bad input, no server, or a refused request (one line on stderr)
  {EXIT_CANCELLED}    the run was cancelled
  {EXIT_INTERRUPTED}  Ctrl-C while waiting: the run goes on

environment:
  MERGEHUB_URL    the MergeHub site, e.g. http://127.0.0.1:8000
  MERGEHUB_TOKEN  an API token (mh_…); submit and cancel need a read-write one
"""
SUBMIT_DESCRIPTION = """Queue a merge of a mergekit YAML config whose base_model and models name the
team's checkpoints (by name, id, path or Hub id). A run's exported config.yaml
(GET /api/v1/runs/ID/config.yaml) works as it is, budget and seed included.
Retries after a connection error reuse the request's Idempotency-Key, so that a
network blip never queues two runs."""


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"give the interval in seconds, e.g. 2; not {text!r}")
    return value


def add_remote_parser(sub) -> None:
    """Register ``remote submit|status|cancel`` on the ``mergehub`` subparsers ``sub``."""
    formatter = argparse.RawDescriptionHelpFormatter
    remote = sub.add_parser("remote", help="submit merges to a MergeHub server and follow them (its REST API)",
                            description="Talk to a MergeHub server's API (docs/api.md).", epilog=EXIT_STATUSES,
                            formatter_class=formatter)
    commands = remote.add_subparsers(dest="remote_command", required=True)

    s = commands.add_parser("submit", help="queue a merge of a mergekit YAML config",
                            description=SUBMIT_DESCRIPTION, epilog=EXIT_STATUSES,
                            formatter_class=formatter)
    s.add_argument("config", metavar="CONFIG.yaml", help="the config file ('-' reads it from stdin)")
    s.add_argument("--budget", default=None, help="expert-read budget: a fraction in (0,1] like 0.1, or a size "
                                                  "like 512MB (default: the config's mergehub: section)")
    s.add_argument("--name", default=None, help="the run's name (default: made from the method and budget)")
    s.add_argument("--seed", type=int, default=None, help="seed of random operators (default: the config's "
                                                         "mergehub: section, else 0)")
    s.add_argument("--measure-deviation", action="store_true",
                   help="also compute the full-read merge to report the deviation")
    s.add_argument("--evaluate", action="append", default=None, metavar="TASK",
                   help="an evaluation task (name or id) to score the merged model on; repeatable")
    s.add_argument("--idempotency-key", default=None, metavar="K",
                   help="send this Idempotency-Key (default: a new random one, reused on retries)")
    _wait_arguments(s, "wait for the run (and its evaluation) to finish, showing progress, then report")

    st = commands.add_parser("status", help="show a run's status, stage, progress and report",
                             epilog=EXIT_STATUSES, formatter_class=formatter)
    st.add_argument("run_id", type=int, metavar="ID")
    _wait_arguments(st, "wait for the run (and its evaluation) to finish, as submit --wait does")

    c = commands.add_parser("cancel", help="cancel a run (a running merge stops at its next block)",
                            epilog=EXIT_STATUSES, formatter_class=formatter)
    c.add_argument("run_id", type=int, metavar="ID")
    c.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def _wait_arguments(p: argparse.ArgumentParser, wait_help: str) -> None:
    p.add_argument("--wait", action="store_true", help=wait_help)
    p.add_argument("--interval", type=_interval, default=DEFAULT_INTERVAL, metavar="SECONDS",
                   help=f"seconds between polls while waiting (default {DEFAULT_INTERVAL:g})")
    p.add_argument("--json", action="store_true", help="print the run as the API shows it (JSON) instead of a report")


def run_remote(args: argparse.Namespace) -> int:
    """Run one ``remote`` subcommand; errors end it with EXIT_ERROR and one line on stderr."""
    from .client import Client, RemoteError

    try:
        client = Client.from_env()
        return {"submit": _submit, "status": _status, "cancel": _cancel}[args.remote_command](client, args)
    except RemoteError as err:
        print(f"mergehub: error: {err}", file=sys.stderr)
        return EXIT_ERROR


def _read_config(path: str) -> str:
    from .client import RemoteError

    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise RemoteError(f"config file {path} not found") from None
    except UnicodeDecodeError:
        raise RemoteError(f"config file {path} is not UTF-8 text") from None
    except OSError as err:
        raise RemoteError(f"config file {path}: {err.strerror or err}") from None


def _submit(client, args) -> int:
    from .client import ConnectionFailed, RemoteError

    config = _read_config(args.config)
    key = args.idempotency_key or str(uuid.uuid4())
    again = f"submit again with --idempotency-key {key} to get it without queueing it twice"
    try:
        queued, replayed = client.submit_run(config, idempotency_key=key, budget=args.budget, name=args.name,
                                             seed=args.seed, measure_deviation=args.measure_deviation,
                                             evaluate_tasks=args.evaluate)
    except ConnectionFailed as err:
        if not err.sent:
            raise
        raise RemoteError(f"{err}; the run may have been queued: {again}") from None
    except KeyboardInterrupt:
        print(f"mergehub: interrupted before the server answered; the run may have been queued: {again}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    run_id = queued["id"]
    if args.json and not args.wait:
        print(json.dumps(queued))
        return EXIT_OK
    earlier = " (by an earlier request with this Idempotency-Key)" if replayed else ""
    print(f"queued run {run_id}{earlier}\npage: {client.page_url(f'runs/{run_id}/')}\napi: {queued['url']}",
          file=sys.stderr if args.json else sys.stdout, flush=True)  # --json --wait: stdout is the JSON alone
    if not args.wait:
        return EXIT_OK
    return _wait(client, run_id, args)


def _status(client, args) -> int:
    if args.wait:
        return _wait(client, args.run_id, args)
    run = client.get_run(args.run_id)
    if args.json:
        print(json.dumps(run))
    else:
        print("\n".join(report.status_lines(run)))
    return EXIT_OK


def _cancel(client, args) -> int:
    run = client.cancel_run(args.run_id)
    if args.json:
        print(json.dumps(run))
    elif run.get("status") == "cancelled":
        print(f"run {args.run_id} cancelled (it had not started)")
    else:
        print(f"run {args.run_id}: cancel requested; it stops at its next block "
              f"(follow it: mergehub remote status {args.run_id} --wait)")
    return EXIT_OK


# --- waiting ----------------------------------------------------------------------------------

def _wait(client, run_id: int, args) -> int:
    """Poll the run (then its evaluation, if it asked for one) until it is over, showing its
    progress; then report. Ctrl-C stops the waiting, not the run."""
    view = report.ProgressView()
    poller = _Poller(client, view, args.interval)
    try:
        run = poller.until_finished(f"run {run_id}", lambda: client.get_run(run_id))
        evaluation = (run.get("evaluation") or {}).get("evaluation") or {}
        if run["status"] == "succeeded" and evaluation.get("status") not in (None, *report.FINISHED):
            eid = evaluation["id"]
            poller.until_finished(f"evaluation {eid}", lambda: client.get_evaluation(eid))
            run = poller.fetch(lambda: client.get_run(run_id))
    except KeyboardInterrupt:
        view.close()
        print(f"mergehub: stopped waiting; run {run_id} goes on on the server. Follow it with `mergehub remote "
              f"status {run_id} --wait`, or cancel it with `mergehub remote cancel {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        view.close()
    if args.json:
        print(json.dumps(run))
    else:
        print("\n".join(report.report_lines(run)))
    return _outcome(run)


def _outcome(run: dict) -> int:
    statuses = [run.get("status"), ((run.get("evaluation") or {}).get("evaluation") or {}).get("status")]
    if "failed" in statuses:
        return EXIT_FAILED
    if "cancelled" in statuses:
        return EXIT_CANCELLED
    return EXIT_OK


class _Poller:
    """Fetches a job every ``interval`` seconds until it is over. It rides out a server it cannot
    reach for up to OUTAGE_SECONDS (a restart) and waits out a 429 as long as Retry-After says."""

    def __init__(self, client, view, interval: float):
        self.client, self.view, self.interval = client, view, interval

    def until_finished(self, label: str, get) -> dict:
        while True:
            job = self.fetch(get)
            self.view.update(label, job)
            if job.get("status") in report.FINISHED:
                return job
            time.sleep(self.interval)

    def fetch(self, get) -> dict:
        from .client import ApiError, ConnectionFailed, RemoteError

        outage_since = None
        while True:
            try:
                return get()
            except ConnectionFailed as err:
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    self.view.note(f"mergehub: {err}; trying again for up to {OUTAGE_SECONDS:.0f} s")
                elif now - outage_since > OUTAGE_SECONDS:
                    raise RemoteError(f"{err}; stopped waiting after {OUTAGE_SECONDS:.0f} s (the run may still be "
                                      "going on: check it with `mergehub remote status ID`)") from None
                time.sleep(self.interval)
            except ApiError as err:
                if err.status != 429:
                    raise
                pause = err.retry_after if err.retry_after is not None else self.interval
                self.view.note(f"mergehub: the server asks to slow down (429); polling again in {pause} s")
                time.sleep(max(pause, self.interval))
