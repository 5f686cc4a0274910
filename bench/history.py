"""Time the history pages (run list, dashboard, checkpoint list) on a near-empty database and
on one with a long history, side by side.

    python -m bench.history [--runs 5000] [--requests 30] [--database-url postgres://.../NAME]

Two throwaway databases are made for the purpose: SQLite files in a temporary directory by
default, or, with ``--database-url``, PostgreSQL databases ``NAME`` and ``NAME_empty``,
created here (they must not exist yet) and dropped at the end. Each is migrated and given a
team (``acme``, where the logged-in user is), a second team with a tenth as many runs (so the
team scoping has rows to skip), six authors and a family of checkpoints:

- near-empty: ``--empty-runs`` runs (10) and 3 checkpoints;
- full: ``--runs`` runs (5000), bulk-created, and ``--checkpoints`` checkpoints (200).

Runs carry metrics, plan, manifest, config and log JSON of the sizes a real merge writes (a
few KB each), mixed statuses, methods and authors, created over a year. Every page is fetched
with Django's test Client (logged in: the whole middleware stack and template rendering, no
network), ``--warmup`` times untimed, then ``--requests`` times timed; a database router
switches between the two databases request by request, so both see the same warm code and
the same load on the machine. One table prints p50 and p95 per page for both databases, their
ratios, and the SQL queries one request of each page makes. ``--show-queries`` also prints
each page's queries with their times (to stderr), to find a slow one. Nothing here runs as a
test.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

METHODS = ("ties", "task_arithmetic", "linear", "dare_ties", "slerp", "della")
# (status, weight): most history is finished; a few runs are live at any time
STATUSES = (("succeeded", 70), ("failed", 15), ("cancelled", 10), ("queued", 3), ("running", 2))
AUTHORS = ("alice", "bob", "carol", "dave", "erin", "frank")
TENSORS_PER_MODEL = 150  # an expert's index_stats has one entry per tensor
DAY_S = 86400


# --- data ---------------------------------------------------------------------------------------

def _hex(rng: random.Random, n: int = 64) -> str:
    return "%0*x" % (n, rng.getrandbits(4 * n))


def _run_fields(rng: random.Random, method: str, status: str, expert_paths: list[str]) -> dict:
    """JSON columns shaped like a real run's: plan and metrics with per-expert rows, a manifest
    with file hashes, a log of a few dozen lines (a few KB each; see mergehub/engine/api.py)."""
    full = rng.randint(2, 40) * 2**30
    planned = int(full * rng.choice((0.1, 0.25, 0.5, 1.0)))
    per_expert = [{"name": p.rsplit("/", 1)[-1], "path": p, "coefficient": round(rng.uniform(.2, 1), 3),
                   "planned_bytes": planned // len(expert_paths), "full_bytes": full // len(expert_paths),
                   "blocks_planned": rng.randint(100, 5000), "blocks_total": 5000,
                   "dropped_norm": rng.random()} for p in expert_paths]
    plan = {"budget": "0.5", "budget_bytes": planned, "planned_expert_bytes": planned, "full_expert_bytes": full,
            "nonzero_expert_bytes": full, "blocks_planned": 4000, "blocks_total": 10000, "digest": _hex(rng),
            "certificate": {"bound": rng.random(), "norm": "l2"}, "per_expert": per_expert,
            "access": {p: [[i * 2**20, (i + 1) * 2**20] for i in range(0, 40, 2)] for p in expert_paths}}
    config = {"merge_method": method, "base_model": "/data/checkpoints/base",
              "models": [{"model": p, "parameters": {"weight": 1.0, "density": 0.7}} for p in expert_paths],
              "parameters": {"normalize": True}, "dtype": "float32",
              "checkpoint_ids": {p: i + 2 for i, p in enumerate(expert_paths)}}
    log = [{"t": f"2025-01-01T00:00:{i:02d}+00:00", "msg": f"read expert block {i} of {len(expert_paths)} experts: "
            f"{rng.randint(1, 900)} MiB in {rng.random():.2f} s"} for i in range(40)]
    fields = {"config": config, "plan": plan, "log": log, "metrics": {}, "manifest": {}}
    if status in ("succeeded", "failed", "cancelled"):
        requested = planned
        fields["metrics"] = {**{k: plan[k] for k in ("budget", "budget_bytes", "planned_expert_bytes",
                                                       "full_expert_bytes", "nonzero_expert_bytes")},
                             "expert_bytes_read": requested if rng.random() < .5 else 0,
                             "expert_bytes_requested": requested, "base_bytes_read": full // 4,
                             "base_bytes_requested": full // 4, "bytes_written": full // 4,
                             "certificate": plan["certificate"], "deviation": {"relative_update": rng.random() / 100},
                             "seconds": {"plan": .2, "read": 12.0, "compute": 30.0, "write": 8.0, "total": 51.0},
                             "per_expert": [dict(pe, read_bytes=pe["planned_bytes"]) for pe in per_expert],
                             "device": "cpu", "warnings": []}
    if status == "succeeded":
        fields["manifest"] = {"inputs": {p: {f"model-0000{i}-of-00004.safetensors": _hex(rng) for i in range(1, 5)}
                                         for p in expert_paths},
                              "outputs": {f"model-0000{i}-of-00004.safetensors": _hex(rng) for i in range(1, 5)},
                              "plan_digest": plan["digest"], "operator": method, "seed": 0,
                              "versions": {"mergehub": "0.1", "torch": "2.13.0"}}
    return fields


def _index_stats(rng: random.Random) -> dict:
    tensors = {f"model.layers.{i // 7}.{name}.weight": {
        "delta_norm": rng.random(), "max_abs": rng.random() / 10, "nonzero_fraction": rng.random(),
        "bytes": 2**24, "blocks": 16, "zero_blocks": rng.randint(0, 16), "layer": i // 7}
        for i, name in enumerate(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] * (TENSORS_PER_MODEL // 7))}
    return {"tensors": tensors, "block_size": 2**20, "seconds": 12.5}


class History:
    """Writes the benchmark's teams, users, checkpoints and runs; ``grow_to`` adds more."""

    def __init__(self, seed: int = 0):
        from django.contrib.auth import get_user_model

        from mergehub.accounts.models import Membership, Role, Team
        from mergehub.registry.models import Checkpoint, Family

        self.rng = random.Random(seed)
        self.now = _now()
        self.acme = Team.objects.create(name="Acme", slug="acme")
        self.rival = Team.objects.create(name="Rival", slug="rival")
        users = get_user_model().objects
        self.users = [users.create_user(username=name, password=None) for name in AUTHORS]
        for user, role in zip(self.users, [Role.ADMIN] + [Role.MEMBER] * (len(AUTHORS) - 1)):
            Membership.objects.create(user=user, team=self.acme, role=role)
        self.outsider = users.create_user(username="mallory", password=None)
        Membership.objects.create(user=self.outsider, team=self.rival, role=Role.ADMIN)
        self.user = self.users[0]
        self.family = {team.pk: Family.objects.create(team=team, name="llama", tensor_count=TENSORS_PER_MODEL,
                                                      signature={f"t{i}": ["bfloat16", [4096, 4096]]
                                                                 for i in range(TENSORS_PER_MODEL)})
                       for team in (self.acme, self.rival)}
        self.bases = {}
        for team in (self.acme, self.rival):
            self.bases[team.pk] = Checkpoint.objects.create(
                team=team, family=self.family[team.pk], name="base", role="base", index_status="ready",
                path="/data/checkpoints/base", size_bytes=16 * 2**30, tensor_count=TENSORS_PER_MODEL,
                file_hashes={f"model-0000{i}-of-00004.safetensors": _hex(self.rng) for i in range(1, 5)})
            family = self.family[team.pk]
            family.base = self.bases[team.pk]
            family.save()
        self.checkpoints = 1
        self.runs = {self.acme.pk: 0, self.rival.pk: 0}

    def grow_to(self, *, runs: int, checkpoints: int) -> None:
        """Add checkpoints (experts) to acme up to ``checkpoints``, and runs up to ``runs`` in
        acme and a tenth of that in the rival team, in bulk."""
        from mergehub.registry.models import Checkpoint
        from mergehub.runs.models import MergeRun, bytes_saved

        new = [Checkpoint(team=self.acme, family=self.family[self.acme.pk], name=f"expert-{i}", role="expert",
                          index_status=self.rng.choice(("ready",) * 8 + ("pending", "failed")),
                          path=f"/data/checkpoints/expert-{i}", local_path=f"/data/checkpoints/expert-{i}",
                          size_bytes=16 * 2**30, tensor_count=TENSORS_PER_MODEL, added_by=self.rng.choice(self.users),
                          index_stats=_index_stats(self.rng),
                          file_hashes={f"model-0000{j}-of-00004.safetensors": _hex(self.rng) for j in range(1, 5)})
               for i in range(self.checkpoints, checkpoints)]
        Checkpoint.objects.bulk_create(new, batch_size=100)
        self.checkpoints = max(self.checkpoints, checkpoints)

        statuses = [s for s, _ in STATUSES]
        weights = [w for _, w in STATUSES]
        templates = {}  # (method, status) -> JSON columns; copied and varied per run (generating each is slow)
        created = MergeRun._meta.get_field("created_at")
        created.auto_now_add = False  # spread the history over a year instead of "now"
        try:
            for team, target in ((self.acme, runs), (self.rival, runs // 10)):
                todo = []
                for i in range(self.runs[team.pk], target):
                    method, status = self.rng.choice(METHODS), self.rng.choices(statuses, weights)[0]
                    if (method, status) not in templates:
                        paths = [f"/data/checkpoints/expert-{k}" for k in range(1, 4)]
                        templates[method, status] = _run_fields(self.rng, method, status, paths)
                    fields = copy.deepcopy(templates[method, status])
                    if fields["metrics"]:
                        fields["metrics"]["expert_bytes_requested"] = int(
                            fields["metrics"]["full_expert_bytes"] * self.rng.choice((0.1, 0.25, 0.5, 1.0)))
                    # the oldest run first; the newest is a few minutes old
                    at = self.now - timedelta(seconds=(target - i) * 365 * DAY_S / max(runs, 1) + 300)
                    todo.append(MergeRun(
                        team=team, author=self.rng.choice(self.users) if team == self.acme else self.outsider,
                        name=f"{method} run {i}", method=method, base=self.bases[team.pk], budget="0.5",
                        status=status, progress=1.0 if status == "succeeded" else self.rng.random(),
                        created_at=at, finished_at=at + timedelta(minutes=2) if status not in ("queued", "running")
                        else None, error="RuntimeError: out of memory\n" * 20 if status == "failed" else "",
                        expert_bytes_saved=bytes_saved(fields["metrics"]) if status == "succeeded" else None,
                        **fields))
                MergeRun.objects.bulk_create(todo, batch_size=250)
                self.runs[team.pk] = max(self.runs[team.pk], target)
        finally:
            created.auto_now_add = True


def _now():
    from django.utils import timezone

    return timezone.now()


# --- timing -------------------------------------------------------------------------------------

DATABASES = ("empty", "full")  # database aliases: the near-empty one and the one with the history


class Switch:
    """A database router that sends every query to one alias, switched between requests, so
    one process can time both databases request by request (same warm code, same machine
    load for both)."""

    alias = "default"

    def db_for_read(self, model, **hints):
        return self.alias

    def db_for_write(self, model, **hints):
        return self.alias

    def allow_relation(self, obj1, obj2, **hints):
        return True

    def allow_migrate(self, db, app_label, **hints):
        return True


SWITCH = Switch()


def pages() -> dict[str, str]:
    from django.urls import reverse

    runs = reverse("runs:list")
    return {
        "run list": runs,
        "run list, ?status=failed": f"{runs}?status=failed",
        "run list, ?status=succeeded&method=ties&page=2": f"{runs}?status=succeeded&method=ties&page=2",
        "run list, last page": f"{runs}?page=999999",
        "dashboard": reverse("dashboard:dashboard"),
        "checkpoint list": reverse("registry:list"),
    }


def measure(clients: dict, urls: dict[str, str], *, requests: int, warmup: int, show_queries: bool) -> dict:
    """{database: {page: {"samples": [seconds], "queries": n}}}. Each round fetches every page
    from each database in turn, so drift and other load on the machine hit both alike."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    out = {db: {} for db in clients}
    for db, client in clients.items():
        SWITCH.alias = db
        for name, url in urls.items():
            with CaptureQueriesContext(connections[db]) as captured:
                _get(client, url)
            out[db][name] = {"samples": [], "queries": len(captured.captured_queries)}
            if show_queries:
                progress(f"-- {db}: {name} ({url}): {len(captured.captured_queries)} queries")
                for q in captured.captured_queries:
                    progress(f"   {float(q['time']) * 1000:7.2f} ms  {q['sql'][:600]}")
    for page in (page for results in out.values() for page in results.values()):
        page["db"] = []
    for i in range(warmup + requests):
        for name, url in urls.items():
            for db, client in clients.items():
                SWITCH.alias = db
                timer = QueryTimer()
                with connections[db].execute_wrapper(timer):
                    started = time.perf_counter()
                    _get(client, url)
                    elapsed = time.perf_counter() - started
                if i >= warmup:
                    out[db][name]["samples"].append(elapsed)
                    out[db][name]["db"].append(timer.seconds)
    return out


class QueryTimer:
    """An execute wrapper summing the wall time of a request's SQL (connecting excluded)."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started


def _get(client, url: str):
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}")
    return response


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0..100), linear between the two nearest samples."""
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def table(results: dict, *, markdown: bool = True) -> str:
    from .table import format_table

    empty, full = results["empty"], results["full"]
    headers = ["page", "queries", "empty p50 ms", "empty p95 ms", "empty SQL p50 ms", "full p50 ms", "full p95 ms",
               "full SQL p50 ms", "p50 full/empty", "p95 full/empty"]
    rows = []
    for name in empty:
        e, f = empty[name]["samples"], full[name]["samples"]
        queries = str(empty[name]["queries"])
        if full[name]["queries"] != empty[name]["queries"]:
            queries += f" / {full[name]['queries']}"
        rows.append([name, queries, f"{statistics.median(e) * 1000:.1f}", f"{percentile(e, 95) * 1000:.1f}",
                     f"{statistics.median(empty[name]['db']) * 1000:.1f}",
                     f"{statistics.median(f) * 1000:.1f}", f"{percentile(f, 95) * 1000:.1f}",
                     f"{statistics.median(full[name]['db']) * 1000:.1f}",
                     f"{statistics.median(f) / statistics.median(e):.2f}x",
                     f"{percentile(f, 95) / percentile(e, 95):.2f}x"])
    return format_table(headers, rows, markdown=markdown)


# --- the databases ------------------------------------------------------------------------------

def database_settings(args, tmp: Path) -> dict:
    """The two aliases' settings: SQLite files in ``tmp``, or two PostgreSQL databases named
    after ``--database-url`` (``NAME_empty`` and ``NAME``)."""
    from django.conf import settings

    base = copy.deepcopy(settings.DATABASES["default"])
    out = {}
    for db in DATABASES:
        conf = copy.deepcopy(base)
        if args.database_url:
            conf["NAME"] = base["NAME"] + ("_empty" if db == "empty" else "")
        else:
            conf["NAME"] = str(tmp / f"{db}.sqlite3")
        out[db] = conf
    return out


def _pg_admin(conf: dict):
    """A connection to the server's maintenance database."""
    import psycopg

    params = {k: v for k, v in {"host": conf.get("HOST"), "port": conf.get("PORT"), "user": conf.get("USER"),
                                "password": conf.get("PASSWORD")}.items() if v}
    return psycopg.connect(dbname="postgres", autocommit=True, **params)


def create_pg_databases(confs: dict) -> None:
    from psycopg import sql

    with _pg_admin(confs["full"]) as conn:
        for conf in confs.values():
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [conf["NAME"]]).fetchone():
                raise SystemExit(f"database {conf['NAME']!r} exists; name a new one in --database-url "
                                 "(the benchmark creates and drops NAME and NAME_empty)")
        for conf in confs.values():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conf["NAME"])))


def drop_pg_databases(confs: dict) -> None:
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    with _pg_admin(confs["full"]) as conn:
        for conf in confs.values():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(conf["NAME"])))


def database_notes(db: str) -> str:
    from django.db import connections

    connection = connections[db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT version(), pg_database_size(current_database())")
            version, size = cursor.fetchone()
        return f"{version.split(' on ')[0]}, {db} database {size / 2**20:.0f} MiB"
    import sqlite3

    name = Path(connection.settings_dict["NAME"])
    size = sum(p.stat().st_size for p in name.parent.glob(name.name + "*"))
    return f"SQLite {sqlite3.sqlite_version} (WAL), {db} file {size / 2**20:.0f} MiB"


def analyze(db: str) -> None:
    """PostgreSQL: after the bulk load, what autovacuum would soon do (planner statistics, the
    visibility map that index-only scans need). SQLite is left as Django leaves it (no ANALYZE)."""
    from django.db import connections

    if connections[db].vendor == "postgresql":
        with connections[db].cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    import django

    return (f"{os.cpu_count()} CPUs{f' ({model})' if model else ''}, {platform.platform()}, "
            f"Python {platform.python_version()}, Django {django.get_version()}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5000, help="runs of the user's team in the full database (5000)")
    p.add_argument("--empty-runs", type=int, default=10, help="runs in the near-empty database (10)")
    p.add_argument("--checkpoints", type=int, default=200, help="checkpoints in the full database (200)")
    p.add_argument("--requests", type=int, default=30, help="timed requests per page and database (30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per page and database first (5)")
    p.add_argument("--database-url", default="",
                   help="postgres://.../NAME: databases NAME (full) and NAME_empty, which must not exist yet, "
                        "are created, used and dropped (default: SQLite files in a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the databases (and print where they are)")
    p.add_argument("--show-queries", action="store_true",
                   help="print each page's SQL with its time, for both databases, to stderr")
    p.add_argument("--text", action="store_true", help="a plain-text table instead of Markdown")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mergehub-history-"))
    os.environ.update({"DJANGO_SETTINGS_MODULE": "mergehub.settings", "MERGEHUB_DATA_DIR": str(tmp),
                       "DEBUG": "false", "ALLOWED_HOSTS": "testserver", "DATABASE_CONN_MAX_AGE": "0"})
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    from django.conf import settings

    confs = database_settings(args, tmp)  # before django.setup(): connections read this once
    settings.DATABASES.update(confs)
    settings.DATABASE_ROUTERS = [SWITCH]
    if args.database_url:
        create_pg_databases(confs)
    try:
        return _bench(args, argv)
    finally:
        if args.keep:
            progress(f"kept: {', '.join(c['NAME'] for c in confs.values())}")
        else:
            if args.database_url:
                drop_pg_databases(confs)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, argv: list[str]) -> int:
    import django

    warnings.filterwarnings("ignore", message="No directory at", module="django.core.handlers.base")  # whitenoise
    django.setup()
    from django.core.management import call_command
    from django.test import Client

    sizes = {"empty": {"runs": args.empty_runs, "checkpoints": 3},
             "full": {"runs": args.runs, "checkpoints": args.checkpoints}}
    clients = {}
    for db in DATABASES:
        SWITCH.alias = db
        started = time.perf_counter()
        call_command("migrate", database=db, verbosity=0)
        history = History(seed=args.seed)
        history.grow_to(**sizes[db])
        analyze(db)
        progress(f"{db}: {sizes[db]['runs']} runs (+{sizes[db]['runs'] // 10} in another team), "
                 f"{sizes[db]['checkpoints']} checkpoints, migrated and written in "
                 f"{time.perf_counter() - started:.1f} s")
        clients[db] = Client()
        clients[db].force_login(history.user)
    urls = pages()
    progress(f"timing {len(urls)} pages × {args.requests} requests × {len(DATABASES)} databases")
    results = measure(clients, urls, requests=args.requests, warmup=args.warmup, show_queries=args.show_queries)

    print("```")
    print(" ".join(["python -m bench.history", *(shlex.quote(a) for a in argv)]))
    print(f"database: {database_notes('empty')}; {database_notes('full')}")
    print(f"near-empty: {args.empty_runs} runs, 3 checkpoints; full: {args.runs} runs of the user's team "
          f"(+{args.runs // 10} of another team), {args.checkpoints} checkpoints")
    print(f"{args.requests} timed requests per page and database after {args.warmup} untimed; each round "
          "fetches every page from both databases in turn; Django test Client, logged in")
    print(f"machine: {machine()}")
    print("```")
    print()
    print(table(results, markdown=not args.text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
