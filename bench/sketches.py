"""What low-rank sketches buy a budgeted merge: quality on the trained family, I/O on the bench family.

    python -m bench.sketches quality [--seeds 0,1] [--ranks 16] [--budgets 0.1,0.25,0.5]
                                     [--methods task_arithmetic] [--block-size 1MiB] [--reuse]
    python -m bench.sketches io [--size 1.1GB] [--experts 4] [--runs 3] [--rank 16]

``quality`` trains (or, with ``--reuse``, reuses) the demo family of each seed under
bench/out/sketches/seed-N, scores the base and the full merge (budget 1.0) of each method
(every expert at weight 1/n: task arithmetic's λ = 1/n), then merges at each budget with blocks
only (rank 0) and with sketches of each rank, scores every merge (exact match, 4 tasks × 200
words) and prints the gain kept, (merge − base) / (full − base), side by side. Every merge
also measures its exact deviation from the full merge, which must stay under its certificate.
The targets of issue 27 (task arithmetic, the default rank, both seeds) are checked at the end.

``io`` generates the synthetic bench family (bench/generate.py; random dense deltas, bf16)
and, with the page cache evicted before each run, times indexing without and with sketches,
the full-budget merge against each catalog, and a budget-0.25 merge's expert-derived reads
against its budget. Medians of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from mergehub.family import train_family  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from mergehub.engine.errors import MergeHubError

from .table import format_table

OUT = Path(__file__).resolve().parent / "out" / "sketches"
TARGETS = {0.1: 0.55, 0.25: 0.75, 0.5: 0.90}  # budget -> gain kept, task arithmetic λ = 1/n


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# method -> (how many experts: None = all four, per-model parameters, global parameters). Weights
# are 1/n where the method takes weights; other values are the methods' usual settings.
def _settings(n: int) -> dict[str, tuple[int | None, dict, dict]]:
    w = 1.0 / n
    return {
        "task_arithmetic": (None, {"weight": w}, {}),
        "ties": (None, {"weight": w, "density": 0.5}, {}),
        "dare_ties": (None, {"weight": w, "density": 0.5}, {}),
        "dare_linear": (None, {"weight": w, "density": 0.5}, {}),
        "breadcrumbs": (None, {"weight": w, "density": 0.9, "gamma": 0.01}, {}),
        "breadcrumbs_ties": (None, {"weight": w, "density": 0.9, "gamma": 0.01}, {}),
        "della": (None, {"weight": w, "density": 0.5, "epsilon": 0.1}, {}),
        "della_linear": (None, {"weight": w, "density": 0.5, "epsilon": 0.1}, {}),
        "sce": (None, {}, {"select_topk": 0.5}),
        "model_stock": (None, {}, {}),
        "ram": (None, {}, {}),
        "ramplus_tl": (None, {}, {}),
        "multislerp": (None, {"weight": 1.0}, {}),
        "nuslerp": (2, {"weight": 0.5}, {}),
        "slerp": (1, {}, {"t": 0.5}),
        "nearswap": (1, {}, {"t": 0.001}),
        "arcee_fusion": (1, {}, {}),
    }


def _mapping(info, method: str) -> dict:
    count, per_model, shared = _settings(len(info.tasks))[method]
    tasks = list(info.tasks)[:count] if count else list(info.tasks)
    mapping = {"merge_method": method, "base_model": str(info.base), "dtype": "float32",
               "models": [{"model": str(info.experts[t]), "parameters": dict(per_model)} for t in tasks]}
    if shared:
        mapping["parameters"] = dict(shared)
    return mapping


def _gain(score: float, base: float, full: float) -> float:
    return (score - base) / (full - base) if full != base else float("nan")


def _method_rows(args, info, method: str, seed: int, base_mean: float, target_rows: list, cert_failures: list) -> list:
    """One method's rows: its full merge, then each budget with blocks only and with each rank."""
    from mergehub.engine import api
    from mergehub.family.evaluate import builtin_tasks, mean, score_model

    tasks = builtin_tasks()
    config = api.load_config_mapping(_mapping(info, method))
    rows = []
    merges = args.out / f"seed-{seed}-merges"

    def merged(budget: float, rank: int) -> tuple[float, dict]:
        catalog = merges / f"catalog-r{rank or args.ranks[0]}"
        out = merges / f"{method}-{budget}-r{rank}"
        result = api.run_merge(config, out, budget=budget, device="cpu", force=True, catalog_dir=catalog,
                               block_size=args.block_size, sketch_rank=rank, measure_deviation=budget < 1)
        m = result.metrics
        if m["certificate"] is not None and m["deviation"] and \
                m["deviation"]["absolute"] > m["certificate"] * (1 + 1e-4) + 1e-6:
            cert_failures.append((seed, method, budget, rank, m["deviation"]["absolute"], m["certificate"]))
        return mean(score_model(out, tasks)), m

    full, _ = merged(1.0, 0)
    for budget in args.budgets:
        try:
            blocks, _ = merged(budget, 0)
            blocks_cell = f"{blocks:.3f} ({_gain(blocks, base_mean, full):.0%})"
        except MergeHubError as exc:  # e.g. multislerp: unread experts equal the base, no direction left
            blocks_cell = f"fails ({str(exc).split(';')[0]})"
        row = [str(seed), method, f"{budget:g}", f"{base_mean:.3f}", f"{full:.3f}", blocks_cell]
        for rank in args.ranks:
            score, m = merged(budget, rank)
            share = m["planned_sketch_bytes"] / max(1, m["planned_expert_bytes"])
            row.append(f"{score:.3f} ({_gain(score, base_mean, full):.0%}; sketches {share:.0%} of bytes)")
            if method == "task_arithmetic" and rank == api.DEFAULT_SKETCH_RANK and budget in TARGETS:
                kept = _gain(score, base_mean, full)
                target_rows.append([str(seed), f"{budget:g}", f"{kept:.1%}", f">= {TARGETS[budget]:.0%}",
                                    "PASS" if kept >= TARGETS[budget] else "FAIL"])
        rows.append(row)
        print(" | ".join(row), file=sys.stderr, flush=True)
    return rows


def quality(args) -> int:
    from mergehub.engine import api
    from mergehub.family.evaluate import builtin_tasks, mean, score_model
    from mergehub.family.store import load_family

    tasks = builtin_tasks()
    rows, cert_failures, target_rows = [], [], []
    for seed in args.seeds:
        root = args.out / f"seed-{seed}"
        info = (load_family(root, seed=seed) if args.reuse else None) or train_family(root, seed=seed, force=True)
        base_mean = mean(score_model(info.base, tasks))
        for method in args.methods:
            try:
                rows += _method_rows(args, info, method, seed, base_mean, target_rows, cert_failures)
            except MergeHubError as exc:  # a method this family cannot take: say so, go on
                rows.append([str(seed), method, "-", f"{base_mean:.3f}", f"not run: {exc}"] + [""] * (1 + len(args.ranks)))
    headers = ["seed", "method", "budget", "base", "full merge", "blocks only (gain kept)"] + \
        [f"sketch rank {r} + blocks" for r in args.ranks]
    print(f"mean exact match over 4 tasks × 200 words; block size {args.block_size} B; "
          f"every expert at weight 1/n\n")
    print(format_table(headers, rows, markdown=args.markdown))
    if target_rows:
        print(f"\ntargets (task arithmetic, sketch rank {api.DEFAULT_SKETCH_RANK})\n")
        print(format_table(["seed", "budget", "gain kept", "required", "result"], target_rows, markdown=args.markdown))
    print(f"\ncertificate ≥ measured deviation in every budgeted merge: "
          f"{'yes' if not cert_failures else 'NO: ' + repr(cert_failures)}")
    failed = cert_failures or any(r[-1] == "FAIL" for r in target_rows)
    return 1 if failed else 0


def io(args) -> int:
    from mergehub.engine import api
    from mergehub.engine.layout import read_model_layout

    from .generate import generate_family
    from .measure import evict, files_under

    root = args.out / f"io-{args.size}"
    if not (root / "family.json").is_file():
        generate_family(root, size=args.size, experts=args.experts, dtype="bfloat16", seed=0)
    base = root / "base"
    experts = sorted(root.glob("expert_*"))
    config = api.load_config(root / "task_arithmetic.yaml")
    files = files_under(base, *experts)
    full_bytes = sum(read_model_layout(e).weight_bytes for e in experts)
    results: dict[str, list[float]] = {}
    reads = []
    for run in range(args.runs):
        for rank in (0, args.rank):
            catalog = args.out / f"io-catalog-r{rank}"
            evict(files)
            t0 = time.perf_counter()
            for e in experts:
                api.index_model(e, base, catalog_dir=catalog, sketch_rank=rank, force=True)
            results.setdefault(f"index, rank {rank}", []).append(time.perf_counter() - t0)
        for rank in (0, args.rank):
            evict(files)
            out = args.out / "io-merge"
            t0 = time.perf_counter()
            api.run_merge(config, out, budget=1.0, device="cpu", force=True,
                          catalog_dir=args.out / f"io-catalog-r{args.rank}", sketch_rank=rank)
            results.setdefault(f"merge 1.0, sketches {'on' if rank else 'off'}", []).append(time.perf_counter() - t0)
        evict(files)
        m = api.run_merge(config, args.out / "io-merge", budget=0.25, device="cpu", force=True,
                          catalog_dir=args.out / f"io-catalog-r{args.rank}", sketch_rank=args.rank).metrics
        reads.append(m)
    os.sync()
    print(f"bench family: {len(experts)} experts × {args.size} bf16, random dense deltas; "
          f"medians of {args.runs} cold-cache runs\n")
    index_ratio = statistics.median(results[f"index, rank {args.rank}"]) / statistics.median(results["index, rank 0"])
    merge_ratio = (statistics.median(results["merge 1.0, sketches on"])
                   / statistics.median(results["merge 1.0, sketches off"]))
    print(format_table(["step", "median s", "runs"],
                       [[k, f"{statistics.median(v):.2f}", " ".join(f"{x:.2f}" for x in v)] for k, v in results.items()],
                       markdown=args.markdown))
    print(f"\nindex time with rank-{args.rank} sketches / without: {index_ratio:.2f}× (target ≤ 2×)")
    print(f"full-budget merge with sketches on / off: {merge_ratio:.2f}× (no sketch is used at full budget)")
    m = reads[-1]
    within = all(r["expert_bytes_requested"] + r["sketch_bytes_requested"] <= r["budget_bytes"] for r in reads)
    print(f"budget 0.25 of {full_bytes / 2**30:.2f} GiB: budget {m['budget_bytes'] / 2**20:.1f} MiB, "
          f"blocks read {m['expert_bytes_requested'] / 2**20:.1f} MiB (storage {m['expert_bytes_read'] / 2**20:.1f} MiB), "
          f"sketches read {m['sketch_bytes_requested'] / 2**20:.1f} MiB; within the budget: {'yes' if within else 'NO'}")
    return 0 if within and index_ratio <= 2.0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sketches", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--markdown", action="store_true")
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=_ints, default=[0, 1])
    q.add_argument("--ranks", type=_ints, default=None, help="sketch ranks (default: the engine's default)")
    q.add_argument("--budgets", type=_floats, default=[0.1, 0.25, 0.5])
    q.add_argument("--methods", default="task_arithmetic")
    q.add_argument("--block-size", default="1MiB")
    q.add_argument("--reuse", action="store_true", help="reuse trained families found under OUT")
    i = sub.add_parser("io")
    i.add_argument("--size", default="1.1GB")
    i.add_argument("--experts", type=int, default=4)
    i.add_argument("--runs", type=int, default=3)
    i.add_argument("--rank", type=int, default=None)
    args = parser.parse_args(argv)
    from mergehub.engine import api
    from mergehub.engine.units import parse_size

    if args.what == "quality":
        args.ranks = args.ranks or [api.DEFAULT_SKETCH_RANK]
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        args.block_size = parse_size(args.block_size, "--block-size")
        return quality(args)
    args.rank = args.rank or api.DEFAULT_SKETCH_RANK
    return io(args)


if __name__ == "__main__":
    sys.exit(main())
