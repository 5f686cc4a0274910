"""MergeHub's evaluation library: load task files, score a model on them, fingerprint models.

    from mergehub.scoring import load_task, evaluate_model
    scores = evaluate_model("out/merged", [load_task("tasks/reverse.jsonl")])

Importing this package does not import torch or Django; torch and transformers are imported
when a model is evaluated. See docs/evaluation.md.
"""

from .errors import TaskError
from .evaluate import evaluate_model
from .fingerprint import model_fingerprint
from .model import pick_device
from .result import TaskScore
from .tasks import KINDS, Task, detect_kind, load_task

__all__ = ["KINDS", "Task", "TaskError", "TaskScore", "detect_kind", "evaluate_model", "load_task",
           "model_fingerprint", "pick_device"]
