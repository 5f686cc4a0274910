"""The family's quality targets (from the product issue) and the merges they are judged on.

Hard requirements, held by tests/family/test_targets.py and printed by bench/family.py:

* the whole family builds in at most ``MAX_BUILD_SECONDS`` on a 2-core machine;
* every expert scores at least ``MIN_EXPERT_SCORE`` on its own task, at least
  ``MIN_EXPERT_GAIN`` above the base there, and no model of the family beats it there;
* the base's mean over the four tasks is at most ``MAX_BASE_MEAN`` (it knows the format and
  stays weak);
* the best of task_arithmetic, TIES and DARE-TIES (``MERGE_SETTINGS``) scores a mean at least
  ``MIN_MERGE_GAIN`` above the base's.

No operator ranking and no single-task merge score is required: those move with the seed.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .store import BASE_DIR, FamilyInfo, expert_dir_name

MAX_BUILD_SECONDS = 240.0
MIN_EXPERT_SCORE = 0.90
MIN_EXPERT_GAIN = 0.25
MAX_BASE_MEAN = 0.45
MIN_MERGE_GAIN = 0.15

# Every expert weighs 1/n (task arithmetic's λ = 1/n); TIES normalises the weights anyway.
MERGE_SETTINGS: dict[str, dict] = {
    "task_arithmetic": {"weight": 0.25},
    "ties": {"weight": 0.25, "density": 0.5},
    "dare_ties": {"weight": 0.25, "density": 0.5},
}


def merge_mapping(info: FamilyInfo, method: str) -> dict:
    """The engine config (mergekit-style mapping) merging all four experts onto the base."""
    return {"merge_method": method, "base_model": str(info.base), "dtype": "float32",
            "models": [{"model": str(info.experts[t]), "parameters": dict(MERGE_SETTINGS[method])}
                       for t in info.tasks]}


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    required: str  # e.g. "<= 240"
    passed: bool


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def check_targets(build_seconds: float, scores: dict[str, dict[str, float]],
                  merge_scores: dict[str, dict[str, float]]) -> list[Target]:
    """Every target, measured. ``scores``: model name (``base``, ``expert-<task>``) -> task ->
    exact match; ``merge_scores``: merge method -> task -> exact match."""
    base = scores[BASE_DIR]
    tasks = list(base)
    out = [Target("build seconds", build_seconds, f"<= {MAX_BUILD_SECONDS:g}",
                  build_seconds <= MAX_BUILD_SECONDS)]
    for task in tasks:
        own = scores[expert_dir_name(task)][task]
        best_other = max(s[task] for name, s in scores.items() if name != expert_dir_name(task))
        out += [
            Target(f"expert-{task} on {task}", own, f">= {MIN_EXPERT_SCORE:g}", own >= MIN_EXPERT_SCORE),
            Target(f"expert-{task} gain over base on {task}", own - base[task], f">= {MIN_EXPERT_GAIN:g}",
                   own - base[task] >= MIN_EXPERT_GAIN),
            Target(f"expert-{task} minus best other model on {task}", own - best_other, ">= 0",
                   own >= best_other),
        ]
    base_mean = _mean(base)
    out.append(Target("base mean", base_mean, f"<= {MAX_BASE_MEAN:g}", base_mean <= MAX_BASE_MEAN))
    best_merge = max(_mean(s) for s in merge_scores.values())
    out.append(Target("best merge mean gain over base", best_merge - base_mean, f">= {MIN_MERGE_GAIN:g}",
                      best_merge - base_mean >= MIN_MERGE_GAIN))
    return out


def run_merges(info: FamilyInfo, out_root, *, catalog_dir=None) -> dict[str, Path]:
    """Merge the family with every method of ``MERGE_SETTINGS`` into ``out_root/<method>``
    (replacing earlier outputs); the engine copies the base's config and tokenizer files."""
    from mergehub.engine import api  # imports torch

    out_root = Path(out_root)
    outputs = {}
    for method in MERGE_SETTINGS:
        config = api.load_config_mapping(merge_mapping(info, method))
        result = api.run_merge(config, out_root / method, force=True, device="cpu",
                               catalog_dir=catalog_dir or out_root / "catalog")
        outputs[method] = Path(result.out_dir)
    return outputs
