"""Tasks: what is evaluated and how, loaded from a file and checked before any model is.

A task file is JSON Lines (``generate`` or ``choice`` examples), plain text (``perplexity``) or
an lm-evaluation-harness YAML (``lm_eval``). ``load_task`` reads it once, checks every line and
returns a frozen ``Task``: its examples, its settings (defaults filled in) and the sha256 of its
bytes. A result is valid for (model fingerprint, ``content_hash``, ``settings_key()``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import lm_eval_yaml
from .errors import TaskError
from .settings import normalize_settings
from .task_files import decode_utf8, json_records, jsonl_examples, read_bytes, record_kind, text_documents

KINDS = ("generate", "choice", "perplexity", "lm_eval")
METRICS = {"generate": "exact_match", "choice": "accuracy", "perplexity": "perplexity"}
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
SUFFIX_KINDS = {".txt": "perplexity", ".yaml": "lm_eval", ".yml": "lm_eval"}
JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    metric: str
    content_hash: str
    settings: dict = field(hash=False)
    path: str
    examples: tuple = field(hash=False, repr=False)
    higher_is_better: bool

    def settings_key(self) -> str:
        """sha256 of the canonical JSON of the kind and settings: equal keys, same scoring."""
        canonical = json.dumps({"kind": self.kind, "settings": self.settings}, sort_keys=True,
                               separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def detect_kind(path) -> str:
    """The kind a file's name (and, for JSON Lines, its first record) implies."""
    path = Path(path)
    if path.suffix.lower() in SUFFIX_KINDS:  # no need to read the file
        return SUFFIX_KINDS[path.suffix.lower()]
    return _kind_from(path, decode_utf8(read_bytes(path, DEFAULT_MAX_BYTES), path))


def load_task(path, *, name=None, kind="auto", settings=None, max_bytes=DEFAULT_MAX_BYTES) -> Task:
    """Read and check a task file; raises TaskError (file, line, what to do) on any problem."""
    path = Path(path)
    if kind not in ("auto",) + KINDS:
        raise TaskError(f"{path}: unknown task kind {kind!r}; use auto, {', '.join(KINDS)}")
    data = read_bytes(path, max_bytes)
    text = decode_utf8(data, path)
    if kind == "auto":
        kind = _kind_from(path, text)
    settings = normalize_settings(kind, settings, path)
    if kind == "lm_eval":
        return _lm_eval_task(path, text, data, name, settings)
    if kind == "perplexity":
        examples = text_documents(text, path, settings["split"])
    else:
        examples = jsonl_examples(text, path, kind)
    return Task(name=name or path.stem, kind=kind, metric=METRICS[kind],
                content_hash=hashlib.sha256(data).hexdigest(), settings=settings, path=str(path),
                examples=examples, higher_is_better=kind != "perplexity")


def _kind_from(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in SUFFIX_KINDS:
        return SUFFIX_KINDS[suffix]
    if suffix not in JSONL_SUFFIXES:
        raise TaskError(f"{path}: cannot tell the task kind from the name; use .jsonl (generate or "
                        "choice), .txt (perplexity) or .yaml (lm_eval), or give the kind")
    line, record = json_records(text, path)[0]
    return record_kind(record, path, line)


def _lm_eval_task(path: Path, text: str, data: bytes, name, settings: dict) -> Task:
    config = lm_eval_yaml.parse_yaml(text, path)
    files = lm_eval_yaml.data_files(config, path)
    digest = hashlib.sha256()
    # the YAML's bytes, then each data file's name and bytes: a change to any changes the hash
    digest.update(hashlib.sha256(data).digest())
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    metric, higher = lm_eval_yaml.metric_of(config)
    lm_eval_yaml.require_lm_eval(path)  # after the checks above, which need only PyYAML
    return Task(name=name or config["task"], kind="lm_eval", metric=metric, content_hash=digest.hexdigest(),
                settings=settings, path=str(path), examples=(), higher_is_better=higher)
