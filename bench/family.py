"""Build the demo family, score it, merge it, and check the family's targets.

    python -m bench.family [--seed 0] [--out bench/out/family] [--reuse] [--markdown]

Trains the family from scratch into OUT (replacing an earlier one, so the build time is
measured; ``--reuse`` keeps a complete family of the same seed and recipe and reports the
build time recorded in its family.json), scores the base and the four experts on the four
built-in tasks with ``mergehub.scoring`` (exact match on 200 held-out words per task), merges
the experts with task_arithmetic, TIES and DARE-TIES (mergehub/family/targets.py: weight 1/4,
density 0.5) into OUT-merges/, scores the merges, and prints the build time, the scores and
every target with PASS or FAIL. Exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from mergehub.family import train_family  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from mergehub.family.evaluate import mean, score_models
from mergehub.family.store import load_family
from mergehub.family.targets import check_targets, run_merges
from mergehub.family.tasks import TASK_NAMES

from .table import format_table

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "family"


def _build(out: Path, seed: int, reuse: bool):
    existing = load_family(out, seed=seed) if reuse else None
    if existing is not None:
        return existing
    return train_family(out, seed=seed, force=True)


def _score_rows(scores: dict[str, dict[str, float]]) -> list[list[str]]:
    return [[name] + [f"{s[t]:.3f}" for t in TASK_NAMES] + [f"{mean(s):.3f}"] for name, s in scores.items()]


def evaluate_family(info, merges_dir: Path) -> tuple[dict, dict]:
    """(scores of base and experts, scores of every merge): model -> task -> exact match."""
    scores = score_models(info.models)
    merge_scores = score_models(run_merges(info, merges_dir))
    return scores, merge_scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.family", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"family directory (default {DEFAULT_OUT}); merges go to OUT-merges")
    parser.add_argument("--reuse", action="store_true", help="reuse a complete family of this seed in OUT")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    info = _build(args.out, args.seed, args.reuse)
    built_now = not info.reused
    print(f"family: {info.root} (seed {info.seed}, {'trained now' if built_now else 'reused'}); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    s = info.seconds
    print(format_table(["phase", "seconds"], [
        ["base", f"{s['base']:.1f}"],
        ["experts (side by side)", f"{s['experts_wall']:.1f}"],
        *[[f"  expert {t}", f"{s['experts'][t]:.1f}"] for t in TASK_NAMES],
        ["total build", f"{s['total']:.1f}"],
    ], markdown=args.markdown))

    merges_dir = args.out.with_name(args.out.name + "-merges")
    scores, merge_scores = evaluate_family(info, merges_dir)
    print("\nexact match (200 held-out words per task)\n")
    print(format_table(["model"] + list(TASK_NAMES) + ["mean"],
                       _score_rows(scores) + _score_rows(merge_scores), markdown=args.markdown))

    targets = check_targets(s["total"], scores, merge_scores)
    print("\ntargets\n")
    print(format_table(["target", "measured", "required", "result"],
                       [[t.name, f"{t.measured:.3f}", t.required, "PASS" if t.passed else "FAIL"]
                        for t in targets], markdown=args.markdown))
    failed = [t for t in targets if not t.passed]
    print(f"\n{len(targets) - len(failed)}/{len(targets)} targets pass; "
          f"bench ran {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
