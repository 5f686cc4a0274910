"""Where MergeHub keeps its files, and the one gate local checkpoint paths go through.

Directories (all read from settings at call time, so tests can point them elsewhere):
``data_dir()/catalog`` (block indexes), ``data_dir()/outputs`` (merged models),
``data_dir()/hf`` (Hugging Face downloads). Local checkpoints must resolve (symlinks followed)
to a directory inside one of ``settings.MERGEHUB_CHECKPOINT_ROOTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError


def data_dir() -> Path:
    return Path(settings.MERGEHUB_DATA_DIR)


def catalog_dir() -> Path:
    return data_dir() / "catalog"


def outputs_dir() -> Path:
    return data_dir() / "outputs"


def hf_cache_dir() -> Path:
    return data_dir() / "hf"


def run_output_dir(run_id: int) -> Path:
    return outputs_dir() / f"run-{run_id}"


def block_size() -> int | None:
    """Block size for indexing and planning; None lets the engine use its default."""
    return int(settings.MERGEHUB_BLOCK_SIZE) or None


def checkpoint_roots() -> list[Path]:
    """The allowed roots, symlinks resolved (a root may itself be a link)."""
    return [Path(os.path.realpath(root)) for root in settings.MERGEHUB_CHECKPOINT_ROOTS]


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_checkpoint_dir(raw: str, field: str = "local_path") -> Path:
    """The real directory ``raw`` names, if it lies under an allowed root; ValidationError otherwise.

    The check is made on the fully resolved path (``os.path.realpath``), so ``root/link`` where
    ``link -> /elsewhere`` is refused even though its spelling is under the root.
    """
    raw = (raw or "").strip()
    roots = checkpoint_roots()
    listed = ", ".join(str(r) for r in roots) or "(none configured)"
    if not raw:
        raise ValidationError({field: "Enter the path of a checkpoint directory."})
    if "\x00" in raw:
        raise ValidationError({field: "The path contains a NUL character."})
    given = Path(raw).expanduser()
    if not given.is_absolute():
        raise ValidationError({field: f"Enter an absolute path under one of the allowed roots: {listed}."})
    real = Path(os.path.realpath(given))
    if not any(_inside(real, root) for root in roots):
        spelled_inside = any(_inside(Path(os.path.abspath(given)), root) for root in roots) or any(
            _inside(Path(os.path.abspath(given)), Path(os.path.abspath(r)))
            for r in settings.MERGEHUB_CHECKPOINT_ROOTS)
        if spelled_inside:
            raise ValidationError({field: f"{raw} is a symlink that leads to {real}, outside the allowed "
                                          f"roots ({listed}); copy or move the checkpoint under a root."})
        raise ValidationError({field: f"{raw} is outside the allowed checkpoint roots ({listed}); move the "
                                      "checkpoint under a root or ask an operator to add one "
                                      "(MERGEHUB_CHECKPOINT_ROOTS)."})
    if not real.exists():
        raise ValidationError({field: f"{raw}: no such directory; check the path."})
    if not real.is_dir():
        raise ValidationError({field: f"{raw} is a file; enter the checkpoint's directory "
                                      "(the one holding config.json and the .safetensors files)."})
    return real
