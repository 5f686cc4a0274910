"""``mergehub family train OUT_DIR``: what the CLI runs (the parser lives in engine/cli.py).

Prints one summary table when done: every model with its training steps and seconds, and
with ``--evaluate`` its exact match on the four built-in tasks.
"""

from __future__ import annotations

import sys

from mergehub.engine.api import Progress

from .recipe import DEFAULT_RECIPE
from .store import BASE_DIR, FamilyError, FamilyInfo
from .tasks import TASK_NAMES


class _StepBar:
    """A tqdm bar counting training steps on a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, desc=p.stage, unit="step", leave=False, file=sys.stderr)
        self.bar.n = p.done
        self.bar.set_postfix_str(p.message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_rows(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def summary(info: FamilyInfo, scores: dict[str, dict[str, float]] | None = None) -> str:
    steps = info.recipe["expert_steps"]
    seconds = info.seconds.get("experts", {})
    headers = ["model", "steps", "train s"] + (list(TASK_NAMES) + ["mean"] if scores else [])
    rows = []
    for name, path in info.models.items():
        task = None if name == BASE_DIR else name.removeprefix("expert-")
        step_count = info.recipe["base_steps"] if task is None else steps[task]
        secs = info.seconds.get("base") if task is None else seconds.get(task)
        row = [name, str(step_count), f"{secs:.1f}" if secs is not None else "n/a"]
        if scores:
            row += [f"{scores[name][t]:.3f}" for t in TASK_NAMES]
            row.append(f"{sum(scores[name].values()) / len(TASK_NAMES):.3f}")
        rows.append(row)
    return format_rows(headers, rows)


def run_train(args) -> int:
    if args.workers < 0:
        raise FamilyError(f"--workers must be 0 or more, not {args.workers}")
    if not 0 < args.steps_scale <= 10:
        raise FamilyError(f"--steps-scale must be in (0, 10], not {args.steps_scale}")
    from .train import train_family

    recipe = DEFAULT_RECIPE if args.steps_scale == 1 else DEFAULT_RECIPE.scaled(args.steps_scale)
    bar = _StepBar(sys.stderr.isatty())
    try:
        info = train_family(args.out_dir, seed=args.seed, recipe=recipe, workers=args.workers,
                            force=args.force, progress=bar)
    finally:
        bar.close()
    scores = None
    if args.evaluate:
        from .evaluate import score_models

        scores = score_models(info.models)
    print(summary(info, scores))
    total = info.seconds.get("total")
    if info.reused:
        print(f"reused the family at {info.root} (seed {info.seed}, same recipe); pass --force to "
              "train it again")
    else:
        print(f"trained the family into {info.root} in {total:.1f} s (seed {info.seed}, "
              f"{info.parameters:,} parameters per model)")
    return 0
