"""Which files of a model directory hold its weights, and the name of a merge's manifest. Free of
torch, so that the command line can find them (to warm the page cache, prefetch.py) before torch
has finished importing, and a page can list a merge's files without the engine."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InvalidCheckpoint

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MANIFEST_NAME = "mergehub_manifest.json"  # beside a merge's weights (manifest.py)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
CONVERT_HINT = (
    "pickle checkpoints are never loaded because unpickling can run code; convert it to "
    "safetensors with "
    "`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('DIR')"
    ".save_pretrained('OUT', safe_serialization=True)\"` on a machine you trust"
)


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InvalidCheckpoint(f"{path}: {CONVERT_HINT}")


def weight_files(root: Path) -> list[Path]:
    """The safetensors files of a model directory, in the order their index (if any) gives."""
    index = root / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidCheckpoint(f"{index}: not a valid safetensors index ({exc})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidCheckpoint(f"{index}: weight_map must be a non-empty object")
        names: list[str] = []
        for fname in weight_map.values():
            if not isinstance(fname, str) or "/" in fname or "\\" in fname or fname in ("", ".", ".."):
                raise InvalidCheckpoint(f"{index}: shard name {fname!r} must be a plain file name")
            if fname not in names:
                names.append(fname)
        return [root / n for n in sorted(names)]
    if (root / SINGLE_NAME).is_file():
        return [root / SINGLE_NAME]
    found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return found
    if len(found) > 1:
        raise InvalidCheckpoint(f"{root}: {len(found)} safetensors files but no {INDEX_NAME}; "
                                "add the index that lists which tensor is in which shard")
    pickles = sorted(p.name for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidCheckpoint(f"{root}: only pickle weights ({', '.join(pickles)}); {CONVERT_HINT}")
    raise InvalidCheckpoint(f"{root}: no safetensors weights found")
