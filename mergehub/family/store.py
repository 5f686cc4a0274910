"""A family directory on disk: its layout, ``family.json``, and finding a reusable family.

    OUT_DIR/
      base/              config.json, generation_config.json, model.safetensors, tokenizer files
      expert-reverse/    the same files, one directory per task
      expert-sort/
      expert-caesar/
      expert-swap/
      family.json        seed, recipe, tasks, model paths (relative), timings, versions

Torch-free: the web app and the CLI read families without importing the trainer.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from mergehub.engine.api import MergeHubError

from .recipe import DEFAULT_RECIPE, Recipe
from .tasks import TASK_NAMES

FAMILY_FILE = "family.json"
FAMILY_FORMAT = 1
FAMILY_KIND = "mergehub-demo-family"
BASE_DIR = "base"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class FamilyError(MergeHubError):
    """The family's output directory cannot be used (exists as something else, unwritable)."""


def expert_dir_name(task_name: str) -> str:
    return f"expert-{task_name}"


@dataclass(frozen=True)
class FamilyInfo:
    root: Path
    seed: int
    recipe: dict
    tasks: tuple[str, ...]
    base: Path
    experts: dict[str, Path]  # task name -> model directory
    seconds: dict = field(default_factory=dict)  # {"base", "experts_wall", "experts": {task: s}, "total"}
    versions: dict = field(default_factory=dict)
    parameters: int = 0
    reused: bool = False  # True when load_family found it, False when it was just trained

    @property
    def models(self) -> dict[str, Path]:
        """Every model directory by name: ``base``, then ``expert-<task>`` in task order."""
        return {BASE_DIR: self.base, **{expert_dir_name(t): self.experts[t] for t in self.tasks}}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("mergehub", "torch", "transformers", "tokenizers", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def family_document(seed: int, recipe: Recipe, seconds: dict, losses: dict, parameters: int) -> dict:
    return {
        "kind": FAMILY_KIND,
        "format": FAMILY_FORMAT,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "tasks": list(TASK_NAMES),
        "models": {"base": BASE_DIR, **{t: expert_dir_name(t) for t in TASK_NAMES}},
        "parameters": parameters,
        "seconds": seconds,
        "final_loss": losses,
        "versions": versions(),
    }


def read_family_document(root: Path) -> dict | None:
    """``family.json`` of ``root`` when it is a demo family's, else None."""
    try:
        doc = json.loads((Path(root) / FAMILY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != FAMILY_KIND:
        return None
    return doc


def _info(root: Path, doc: dict, reused: bool) -> FamilyInfo:
    models = doc["models"]
    return FamilyInfo(root=root, seed=doc["seed"], recipe=doc["recipe"], tasks=tuple(doc["tasks"]),
                      base=root / models["base"], experts={t: root / models[t] for t in doc["tasks"]},
                      seconds=doc.get("seconds", {}), versions=doc.get("versions", {}),
                      parameters=doc.get("parameters", 0), reused=reused)


def info_from_document(root: Path, doc: dict, reused: bool = False) -> FamilyInfo:
    return _info(Path(root).absolute(), doc, reused)


def load_family(out_dir, *, seed: int = 0, recipe: Recipe = DEFAULT_RECIPE) -> FamilyInfo | None:
    """The complete family at ``out_dir`` when it was built with this seed and recipe, else None."""
    root = Path(out_dir).absolute()
    doc = read_family_document(root)
    if (doc is None or doc.get("format") != FAMILY_FORMAT or doc.get("seed") != seed
            or doc.get("recipe") != recipe.to_dict() or doc.get("tasks") != list(TASK_NAMES)):
        return None
    try:
        info = _info(root, doc, reused=True)
    except (KeyError, TypeError):
        return None
    if not all((d / f).is_file() for d in info.models.values() for f in MODEL_FILES):
        return None
    return info
