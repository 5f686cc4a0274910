"""Scoring family models on the four built-in tasks, through ``mergehub.scoring``.

The rule is the scoring library's ``generate`` kind with the built-in settings: greedy
decoding of at most 10 new tokens, stopped at EOS or a newline, special tokens dropped,
whitespace stripped around output and target, then exact match.
"""

from __future__ import annotations

from pathlib import Path

from .tasks import BUILTIN_TASKS


def builtin_tasks() -> list:
    """The four built-in tasks as ``mergehub.scoring.Task`` objects, in task order."""
    from mergehub.scoring import load_task

    return [load_task(t["path"], name=t["name"], kind=t["kind"], settings=t["settings"])
            for t in BUILTIN_TASKS]


def score_model(model_dir: Path, tasks: list | None = None, **options) -> dict[str, float]:
    """Exact match of one model per task name. ``options`` go to ``evaluate_model``."""
    from mergehub.scoring import evaluate_model

    scores = evaluate_model(model_dir, tasks or builtin_tasks(), device="cpu", **options)
    return {s.task: s.score for s in scores}


def score_models(models: dict[str, Path], **options) -> dict[str, dict[str, float]]:
    """Exact match per model name, then per task name."""
    tasks = builtin_tasks()
    return {name: score_model(path, tasks, **options) for name, path in models.items()}


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)
