"""``mergehub`` command line: merge, index, plan, sweep, replay, family, eval, remote.

Bad input ends with exit status 2 and one line on stderr saying what is wrong and what to do;
a progress bar is drawn only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

# Only torch-free modules at the top: `merge` starts warming the page cache (prefetch.py)
# before the engine, and with it torch, is imported (_import_engine).
from .errors import Cancelled, MergeHubError
from .prefetch import Prefetch, start_for_config
from .publish import check_target
from .units import binary_size

if TYPE_CHECKING:
    from .control import Progress


def _import_engine() -> None:
    """Import the engine and torch. Importing torch creates about a million objects, and the
    cyclic GC's passes over them cost ~0.2 s of every command's start-up: collection is paused
    for the import, and what it created is moved out of the GC's sight (gc.freeze) after."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        from . import api

        api.import_torch_modules()  # api itself imports torch lazily: do it now, GC paused
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def _human(n: float | None) -> str:
    return "n/a" if n is None else binary_size(n)


class _Bar:
    """tqdm bars per stage on a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if p.stage != self.stage:
            self.close()
            self.stage = p.stage
            self.bar = tqdm(total=p.total, desc=p.stage, unit="iB", unit_scale=True, unit_divisor=1024,
                            leave=False, file=sys.stderr)
        self.bar.n = p.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


CATALOG_HELP = ("catalog directory (default: $MERGEHUB_CATALOG, else $MERGEHUB_DATA_DIR/catalog, the "
                "web app's, else ~/.cache/mergehub/catalog)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--block-size", default=None,
                   help="block size, e.g. 1MiB (default $MERGEHUB_BLOCK_SIZE, as the web app, else 1MiB)")
    p.add_argument("--catalog", default=None, help=CATALOG_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of random operators (default 0)")


def _sketch_flag(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--sketch-rank", type=int, default=None,
                   help=f"rank of the low-rank delta sketches a budgeted plan may use; 0 = off ({default_help})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergehub", description="Budget-aware merging of LLM checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge models described by a mergekit-style YAML config")
    m.add_argument("config")
    m.add_argument("out_dir")
    m.add_argument("--budget", default="1.0",
                   help="fraction in (0,1] of the full expert bytes, or a size like 512MB (default 1.0)")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    m.add_argument("--measure-deviation", action="store_true",
                   help="also read the omitted blocks (counted apart) to measure the exact deviation")
    m.add_argument("--shard-size", default="5GB", help="largest output shard (default 5GB)")
    _sketch_flag(m, "default: the config's mergehub.sketch_rank, else the operator's default")
    _common(m)

    i = sub.add_parser("index", help="build or refresh the catalog entry of an expert against its base")
    i.add_argument("model_dir")
    i.add_argument("--base", required=True)
    i.add_argument("--force", action="store_true", help="rebuild even if the entry is current")
    i.add_argument("--json", action="store_true")
    i.add_argument("--sketch-rank", type=int, default=None,
                   help="rank of the low-rank delta sketches stored with the entry; 0 = none (default 16)")
    _common(i)

    pl = sub.add_parser("plan", help="show the access set a budget gives; reads no expert weights")
    pl.add_argument("config")
    pl.add_argument("--budget", default="1.0")
    pl.add_argument("--json", action="store_true")
    _sketch_flag(pl, "default: the config's mergehub.sketch_rank, else the operator's default")
    _common(pl)

    s = sub.add_parser("sweep", help="planned bytes, certificate and exact deviation per budget, one pass")
    s.add_argument("config")
    s.add_argument("--budgets", default="1,0.5,0.25,0.1")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--json", action="store_true")
    _sketch_flag(s, "default: the config's mergehub.sketch_rank, else the operator's default; "
                    "with sketches on, each budget is also planned without them")
    _common(s)

    r = sub.add_parser("replay", help="re-run a manifest; non-zero exit unless bit-identical")
    r.add_argument("manifest")
    r.add_argument("out_dir")
    r.add_argument("--force", action="store_true")
    r.add_argument("--catalog", default=None, help=CATALOG_HELP)
    r.add_argument("--device", default=None, choices=["cpu", "cuda"])

    fam = sub.add_parser("family", help="the demo family: a tiny Llama base and four task experts")
    fam_sub = fam.add_subparsers(dest="family_command", required=True)
    ft = fam_sub.add_parser("train", help="train the demo family from scratch (about 1-2 minutes on "
                                          "2 CPU cores); reuses OUT_DIR if it holds this seed's family")
    ft.add_argument("out_dir")
    ft.add_argument("--seed", type=int, default=0, help="seed of the whole family (default 0)")
    ft.add_argument("--force", action="store_true", help="retrain, replacing the family in OUT_DIR")
    ft.add_argument("--workers", type=int, default=2, help="processes training the experts (default 2)")
    ft.add_argument("--steps-scale", type=float, default=1.0,
                    help="multiply every phase's training steps, e.g. 0.05 for a quick smoke run (default 1)")
    ft.add_argument("--evaluate", action="store_true",
                    help="score every model on the four built-in tasks when done")

    from mergehub.remote.command import add_remote_parser  # the API client: no torch, no Django
    from mergehub.scoring.command import add_eval_parser  # torch-free

    add_eval_parser(sub)
    add_remote_parser(sub)
    return parser


def _block_size(args) -> int:
    """--block-size, else the web app's MERGEHUB_BLOCK_SIZE (0 or unset: the default), so that
    both key their catalog entries alike and neither re-indexes what the other indexed."""
    from .blocks import DEFAULT_BLOCK_SIZE
    from .units import parse_size

    if args.block_size:
        return parse_size(args.block_size, "--block-size")
    shared = os.environ.get("MERGEHUB_BLOCK_SIZE", "").strip()
    if shared and shared != "0":
        return parse_size(shared, "MERGEHUB_BLOCK_SIZE")
    return DEFAULT_BLOCK_SIZE


def _cmd_merge(args, bar, prefetch: Prefetch | None = None) -> int:
    from . import api
    from .units import parse_size

    config = api.load_config(args.config)
    result = api.run_merge(config, args.out_dir, budget=args.budget, seed=args.seed, device=args.device,
                           block_size=_block_size(args), catalog_dir=args.catalog, force=args.force,
                           measure_deviation=args.measure_deviation, progress=bar,
                           shard_bytes=parse_size(args.shard_size, "--shard-size"), prefetch=prefetch,
                           sketch_rank=args.sketch_rank)
    bar.close()
    m = result.metrics
    s = m["seconds"]
    if m["indexed_now"]:
        print(f"indexed {len(m['indexed_now'])} expert(s) first in {s['index']:.2f} s (one-off, "
              "reused by later merges)")
    print(f"merged {config.merge_method} into {result.out_dir} in {s['total'] - s['index']:.2f} s "
          f"on {m['device']}")
    print(f"expert bytes: planned {_human(m['planned_expert_bytes'])} of {_human(m['full_expert_bytes'])}"
          f" ({_pct(m['planned_expert_bytes'], m['full_expert_bytes'])}), read from storage "
          f"{_human(m['expert_bytes_read'])}; base read {_human(m['base_bytes_read'])}; "
          f"written {_human(m['bytes_written'])}")
    if m["planned_sketch_bytes"]:
        print(f"of the planned bytes, {_human(m['planned_sketch_bytes'])} are {m['sketches_planned']} sketches of "
              f"rank ≤ {m['sketch_rank']} (read {_human(m['sketch_bytes_read'])} from the catalog)")
    if m["certificate"] is not None:
        print(f"certificate: ‖θ_A − θ_full‖₂ ≤ {m['certificate']:.6g}")
    if m["deviation"]:
        d = m["deviation"]
        print(f"deviation from the full-read merge: {d['update_relative']:.3e} of the update, "
              f"{d['weight_relative']:.3e} of the weights")
    for w in m["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _pct(a, b) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def _cmd_index(args, bar) -> int:
    from . import api

    rank = {} if args.sketch_rank is None else {"sketch_rank": args.sketch_rank}
    summary = api.index_model(args.model_dir, args.base, catalog_dir=args.catalog,
                              block_size=_block_size(args), force=args.force, progress=bar, **rank)
    bar.close()
    d = summary.to_dict()
    if args.json:
        print(json.dumps(d))
        return 0
    changed = sum(1 for t in d["tensors"].values() if t["delta_norm"] > 0)
    state = f"indexed in {d['seconds']:.2f} s" if summary.indexed_now else "already indexed (current)"
    print(f"{args.model_dir}: {state}; {changed} of {len(d['tensors'])} tensors differ from the base")
    if d["sketch_bytes"]:
        print(f"sketches: rank {d['sketch_rank']} of {d['sketched_tensors']} tensors, {_human(d['sketch_bytes'])} "
              f"({d['sketch_seconds']:.2f} s of the pass)")
    for name in d["nonfinite"]:
        print(f"warning: NaN or Inf in {name}", file=sys.stderr)
    return 0


def _cmd_plan(args, bar) -> int:
    from . import api

    config = api.load_config(args.config)
    options = dict(budget=args.budget, catalog_dir=args.catalog, block_size=_block_size(args), seed=args.seed,
                   sketch_rank=args.sketch_rank)
    try:
        plan = api.plan_merge(config, **options)
    except api.NotIndexed:  # index the missing experts first: a one-off cost, reported apart
        started = time.perf_counter()
        plan = api.plan_merge(config, index_missing=True, progress=bar, **options)
        bar.close()
        print(f"indexed the experts missing from the catalog first in {time.perf_counter() - started:.2f} s "
              "(one-off, reused by later merges)", file=sys.stderr if args.json else sys.stdout)
    for w in plan.warnings():  # on stderr, as merge's: stdout stays the report (or one JSON object)
        print(f"warning: {w}", file=sys.stderr)
    d = plan.to_dict()
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"budget {d['budget']}: planned {_human(d['planned_expert_bytes'])} of "
          f"{_human(d['full_expert_bytes'])} expert bytes ({d['blocks_planned']}/{d['blocks_total']} blocks); "
          f"non-zero {_human(d['nonzero_expert_bytes'])}")
    if d["sketch_bytes"]:
        print(f"of which sketches: {_human(d['sketch_bytes'])} ({d['sketches_planned']} of "
              f"{d['sketches_available']} sketches, rank ≤ {d['sketch_rank']}), exact blocks: {_human(d['block_bytes'])}")
    cert = "n/a (operator is not additive)" if d["certificate"] is None else f"{d['certificate']:.6g}"
    print(f"certificate: {cert}\nplan digest: {d['plan_digest']}")
    return 0


def _cmd_sweep(args, bar) -> int:
    from . import api

    config = api.load_config(args.config)
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    rows = api.sweep(config, budgets, seed=args.seed, device=args.device, block_size=_block_size(args),
                     catalog_dir=args.catalog, progress=bar, sketch_rank=args.sketch_rank)
    bar.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'budget':>8} {'plan':>7} {'planned':>12} {'sketches':>10} {'of full':>8} {'certificate':>12} "
          f"{'dev/update':>11} {'dev/weights':>11}")
    for r in rows:
        cert = "n/a" if r["certificate"] is None else f"{r['certificate']:.4g}"
        print(f"{r['budget']:>8} {r['mode']:>7} {_human(r['planned_expert_bytes']):>12} {_human(r['sketch_bytes']):>10} "
              f"{_pct(r['planned_expert_bytes'], r['full_expert_bytes']):>8} {cert:>12} "
              f"{r['deviation']['update_relative']:>11.3e} {r['deviation']['weight_relative']:>11.3e}")
    return 0


def _cmd_replay(args, bar) -> int:
    from . import api

    result = api.replay(args.manifest, args.out_dir, force=args.force, catalog_dir=args.catalog,
                        device=args.device, progress=bar)
    bar.close()
    print(f"replayed into {result.out_dir}: output is bit-identical to the manifest")
    return 0


def _cmd_family(args, bar) -> int:
    from mergehub.family.command import run_train  # the only family subcommand

    return run_train(args)


def _cmd_eval(args, bar) -> int:
    from mergehub.scoring.command import run_eval

    return run_eval(args)


def _cmd_remote(args, bar) -> int:
    from mergehub.remote.command import run_remote

    return run_remote(args)


COMMANDS = {"merge": _cmd_merge, "index": _cmd_index, "plan": _cmd_plan, "sweep": _cmd_sweep,
            "replay": _cmd_replay, "family": _cmd_family, "eval": _cmd_eval, "remote": _cmd_remote}


def _warm_up(args) -> Prefetch | None:
    """Start warming the page cache for a merge that will go ahead (prefetch.py); not when its
    output directory is refused, which the merge then reports."""
    try:
        check_target(Path(args.out_dir).absolute(), args.force)
    except MergeHubError:
        return None
    return start_for_config(args.config, args.budget)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor behind stdout (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bar = _Bar(sys.stderr.isatty())
    prefetch = _warm_up(args) if args.command == "merge" else None
    if args.command == "family":
        import mergehub.family  # noqa: F401  (sets OMP_WAIT_POLICY, which must precede torch's import)
    if args.command == "eval":  # idle OpenMP threads sleep instead of spinning between forward passes
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if args.command != "remote":  # the API client needs neither the engine nor torch
            _import_engine()
        if args.command == "merge":
            return _cmd_merge(args, bar, prefetch)
        return COMMANDS[args.command](args, bar)
    except KeyboardInterrupt:
        bar.close()
        print("mergehub: interrupted; nothing was published", file=sys.stderr)
        return 130
    except (MergeHubError, Cancelled) as exc:
        bar.close()
        print(f"mergehub: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout's reader went away (`mergehub plan --json | head -c 1`): the work is done (a
        # merge is published before its report is printed), only the report was cut short.
        # End quietly with the status of a tool stopped by SIGPIPE, not as a path error.
        bar.close()
        _drop_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except OSError as exc:
        bar.close()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mergehub: error: {where}{exc.strerror or exc}; check that the path exists and is "
              "readable (inputs) or writable (output)", file=sys.stderr)
        return 2
    finally:
        if prefetch is not None:
            prefetch.finish()


def run() -> NoReturn:
    """The ``mergehub`` console script: ``main``, then an exit without the interpreter's teardown.

    Tearing down an interpreter that has imported torch (its modules and exit hooks) took
    0.12–0.19 s after every command, measured here; by the time ``main`` returns, the work is
    done and published and every thread has ended, so once the output streams are flushed the
    process ends at once (``os._exit``), 0.01–0.02 s. Callers that embed ``main`` keep their
    interpreter: only this entry point exits."""
    try:
        status = main()
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        status = exc.code
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the report's reader went away: as in main, the status of SIGPIPE
        status = status or 128 + getattr(signal, "SIGPIPE", 13)
    except (OSError, ValueError):  # stdout closed or unusable: nothing more can be said there
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if "logging" in sys.modules:  # flush handlers a library may have configured
        sys.modules["logging"].shutdown()
    os._exit(status)


if __name__ == "__main__":
    run()
