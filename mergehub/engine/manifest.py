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
from .model_files import MANIFEST_NAME
from .writer import OUTPUT_HASHES

FILENAME = MANIFEST_NAME
FORMAT = "mergehub-manifest/1"


def build(*, config: dict, plan, seed: int, device: str, outputs: dict, metrics: dict, inputs: dict,
          shard_bytes: int, output_hash: str) -> dict:
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
            "sketch_rank": plan.sketch_rank,
            "sketches": plan.sketches,
            "planned_sketch_bytes": plan.sketch_bytes,
        },
        "shard_bytes": shard_bytes,
        "outputs": {"files": outputs, "hash": output_hash},
        "metrics": metrics,
        "versions": {"mergehub": __version__, "python": platform.python_version(),
                     "torch": torch.__version__, "safetensors": safetensors.__version__,
                     "numpy": numpy.__version__},
    }


def output_hash(doc: dict) -> str:
    """The algorithm of the manifest's output hashes (writer.OUTPUT_HASHES); manifests written
    before 0.2.4 name none and hold sha256 hashes."""
    return doc["outputs"].get("hash", "sha256")


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
    broken = _malformed(doc)
    if broken:
        raise InvalidCheckpoint(f"{path}: the manifest lacks or garbles {', '.join(broken)}; replay needs "
                                "the manifest as MergeHub wrote it")
    return doc


# field path -> type replay relies on
_FIELDS = {("config",): dict, ("inputs",): dict, ("seed",): int, ("budget", "spec"): str,
           ("plan", "digest"): str, ("plan", "block_size"): int, ("outputs", "files"): dict}


def _malformed(doc: dict) -> list[str]:
    broken = []
    for keys, kind in _FIELDS.items():
        value = doc
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            broken.append(".".join(keys))
    access = doc["plan"].get("access") if isinstance(doc.get("plan"), dict) else None
    if access is not None and not _is_access(access):
        broken.append("plan.access")
    if isinstance(doc.get("outputs"), dict) and output_hash(doc) not in OUTPUT_HASHES:
        broken.append("outputs.hash")
    shard_bytes = doc.get("shard_bytes", 1)  # absent in manifests that predate it: the default
    if type(shard_bytes) is not int or shard_bytes <= 0:
        broken.append("shard_bytes")
    return broken


def _is_access(value) -> bool:
    """[{tensor: [[first, last], ...]}, ...] with integer block indices."""
    def is_run(r) -> bool:
        return isinstance(r, list) and len(r) == 2 and all(type(b) is int for b in r)

    return isinstance(value, list) and all(
        isinstance(per, dict) and all(isinstance(runs, list) and all(map(is_run, runs)) for runs in per.values())
        for per in value)


# The random stream changed in 0.2 (random_stream.py): random merges made before replay differently.
RANDOM_STREAM_SINCE = (0, 2)
# Methods whose results changed on purpose in a release: merges made before it replay differently.
CHANGED_SINCE = {
    "arcee_fusion": ((0, 2, 6), "takes its threshold's sample spread over the rows (0.2.6) and computes its KL "
                                "divergence accurately (0.2.2; docs/operators.md)"),
}


def _version(text: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string; (0, 0, 0) when it is not one."""
    try:
        return tuple(int(part) for part in text.split(".")[:3])
    except ValueError:
        return (0, 0, 0)


def check_replayable(doc: dict, random_stream: bool) -> None:
    """Refuse, before anything is written, a replay that cannot be bit-identical: a merge that
    drew from the random stream (DARE, DELLA) recorded by a MergeHub whose draws differed, or
    one of a method whose results changed since the recording MergeHub (CHANGED_SINCE)."""
    made_by = str(doc.get("versions", {}).get("mergehub", "0"))
    version, method = _version(made_by), doc["config"].get("merge_method")
    again = f"replay it with MergeHub {made_by}, or run the merge again to get a new manifest"
    if random_stream and version < RANDOM_STREAM_SINCE:
        raise ReplayMismatch(
            f"this {method} merge was made by MergeHub {made_by}, whose random draws differ from this "
            f"version's ({__version__}); {again}")
    since, what = CHANGED_SINCE.get(method, (None, ""))
    if since is not None and version < since:
        raise ReplayMismatch(
            f"this {method} merge was made by MergeHub {made_by}; since {'.'.join(map(str, since))} "
            f"{method} {what}, so this version ({__version__}) gives other results; {again}")


def _input_identity(inputs: dict) -> tuple:
    """The inputs as replay must find them: each model's directory and file hashes, base first.
    Not the names the config gave them: a merge whose YAML said ``./expert`` is replayed from its
    manifest, which records the resolved directory."""
    def one(entry):
        return (entry or {}).get("path"), (entry or {}).get("files")
    return one(inputs.get("base")), tuple(one(m) for m in inputs.get("models") or [])


def verify_replay(original: dict, replayed: dict) -> None:
    """Inputs must be the recorded ones and every output file bit-identical."""
    if _input_identity(original["inputs"]) != _input_identity(replayed["inputs"]):
        raise ReplayMismatch("the input files differ from the ones the manifest recorded "
                             "(different hashes); replay needs the original checkpoints")
    if original["plan"]["digest"] != replayed["plan"]["digest"]:
        raise ReplayMismatch("the replayed plan digest differs from the manifest's")
    a, b = original["outputs"]["files"], replayed["outputs"]["files"]
    differing = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
    if differing:
        raise ReplayMismatch(f"replayed output differs from the manifest in {', '.join(differing)}")
