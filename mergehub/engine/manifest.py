"""The replayable manifest written next to every merged model (``mergehub_manifest.json``)."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy
import safetensors
import torch

from .. import __version__
from .errors import InvalidCheckpoint, ReplayMismatch

FILENAME = "mergehub_manifest.json"
FORMAT = "mergehub-manifest/1"


def build(*, config: dict, plan, seed: int, device: str, outputs: dict, metrics: dict, inputs: dict) -> dict:
    return {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "merge_method": config.get("merge_method"),
        "inputs": inputs,
        "seed": seed,
        "device": device,
        "budget": {"spec": plan.budget.text, "bytes": plan.budget_bytes},
        "plan": {
            "digest": plan.digest,
            "block_size": plan.block_size,
            "planned_expert_bytes": plan.planned_expert_bytes,
            "full_expert_bytes": plan.full_expert_bytes,
            "certificate": plan.certificate,
            "access": plan.access_ranges(),
        },
        "outputs": {"files": outputs},
        "metrics": metrics,
        "versions": {"mergehub": __version__, "python": platform.python_version(),
                     "torch": torch.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
    }


def write(directory: Path, doc: dict) -> None:
    (Path(directory) / FILENAME).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def read(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{path}: no such manifest") from None
    except (OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidCheckpoint(f"{path}: not a MergeHub manifest (format {FORMAT} expected)")
    return doc


def verify_replay(original: dict, replayed: dict) -> None:
    """Inputs must be the recorded ones and every output file bit-identical."""
    if original["inputs"] != replayed["inputs"]:
        raise ReplayMismatch("the input files differ from the ones the manifest recorded "
                             "(different hashes); replay needs the original checkpoints")
    if original["plan"]["digest"] != replayed["plan"]["digest"]:
        raise ReplayMismatch("the replayed plan digest differs from the manifest's")
    a, b = original["outputs"]["files"], replayed["outputs"]["files"]
    differing = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    if differing:
        raise ReplayMismatch(f"replayed output differs from the manifest in {', '.join(differing)}")
