"""Reading task files: size and type checks, UTF-8, JSON Lines records and text documents.

Every problem becomes a TaskError naming the file and, where there is one, the line. Only JSON
and plain text are parsed here; nothing is ever unpickled or executed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import TaskError, where

GENERATE_KEYS = frozenset({"prompt", "target"})
CHOICE_KEYS = frozenset({"prompt", "choices", "answer"})
RECORD_KINDS = {GENERATE_KEYS: "generate", CHOICE_KEYS: "choice"}


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, after checking that it is a regular file of at most ``max_bytes``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TaskError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise TaskError(f"{path}: cannot read it ({exc.strerror}); check the path and permissions") from None
    if not stat.S_ISREG(info.st_mode):
        raise TaskError(f"{path}: not a regular file; give a task file (.jsonl, .txt or lm-eval .yaml)")
    if info.st_size > max_bytes:
        raise TaskError(f"{path}: {info.st_size} bytes is more than the limit of {max_bytes}; "
                        "split the task or raise max_bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise TaskError(f"{path}: cannot read it ({exc.strerror}); check the permissions") from None
    if len(data) > max_bytes:  # it grew after the stat
        raise TaskError(f"{path}: more than the limit of {max_bytes} bytes; split the task or raise max_bytes")
    return data


def decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TaskError(f"{where(path, line)}: not valid UTF-8 (byte {exc.start}); "
                        "save the file as UTF-8") from None


def json_records(text: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where(path, number)}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "write one JSON object per line") from None
        if not isinstance(record, dict):
            raise TaskError(f"{where(path, number)}: a JSON {type(record).__name__}, not an object; write "
                            'one object per line, e.g. {"prompt": "...", "target": "..."}')
        records.append((number, record))
    if not records:
        raise TaskError(f"{path}: the task is empty; add at least one example")
    return records


def record_kind(record: dict, path: Path, line: int) -> str:
    """"generate" or "choice", from the record's keys."""
    keys = frozenset(record)
    if keys in RECORD_KINDS:
        return RECORD_KINDS[keys]
    if "choices" in keys or "answer" in keys:
        expected = CHOICE_KEYS
    else:
        expected = GENERATE_KEYS
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    problems = []
    if missing:
        problems.append("missing " + ", ".join(map(repr, missing)))
    if extra:
        problems.append("unexpected " + ", ".join(map(repr, extra)))
    raise TaskError(f"{where(path, line)}: {'; '.join(problems)}; a generate example has exactly "
                    '"prompt" and "target", a choice example exactly "prompt", "choices" and "answer"')


def _text(record: dict, key: str, path: Path, line: int, allow_empty: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str) or (not value and not allow_empty):
        kind = "a string" if allow_empty else "a non-empty string"
        raise TaskError(f"{where(path, line)}: {key!r} must be {kind}, not {value!r}")
    return value


def generate_example(record: dict, path: Path, line: int) -> dict:
    return {"prompt": _text(record, "prompt", path, line),
            "target": _text(record, "target", path, line, allow_empty=True)}


def choice_example(record: dict, path: Path, line: int) -> dict:
    """The record with ``answer`` turned into an index into ``choices``."""
    prompt = _text(record, "prompt", path, line)
    choices = record["choices"]
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise TaskError(f"{where(path, line)}: 'choices' must be a list of at least two non-empty strings")
    answer = record["answer"]
    if isinstance(answer, str):
        if answer not in choices:
            raise TaskError(f"{where(path, line)}: answer {answer!r} is not one of the choices; give an "
                            f"index from 0 to {len(choices) - 1} or the exact text of a choice")
        answer = choices.index(answer)
    elif isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise TaskError(f"{where(path, line)}: answer {answer!r} is out of range; give an index from 0 "
                        f"to {len(choices) - 1} or the exact text of a choice")
    return {"prompt": prompt, "choices": list(choices), "answer": answer}


def jsonl_examples(text: str, path: Path, kind: str) -> tuple[dict, ...]:
    """Checked examples of a generate or choice JSON Lines file; every line must be ``kind``."""
    make = generate_example if kind == "generate" else choice_example
    examples = []
    for line, record in json_records(text, path):
        found = record_kind(record, path, line)
        if found != kind:
            raise TaskError(f"{where(path, line)}: a {found} example in a {kind} task; "
                            "keep one format per file")
        examples.append(make(record, path, line))
    return tuple(examples)


def text_documents(text: str, path: Path, split: str) -> tuple[dict, ...]:
    """Documents of a perplexity task: paragraphs (split on blank lines) or the whole text.
    Each is ``{"text", "line"}``, ``line`` being where it starts."""
    if split == "none":
        documents = [{"text": text.strip("\n"), "line": 1}] if text.strip() else []
    else:
        documents, lines, start = [], [], 1
        for number, line in enumerate(text.splitlines() + [""], start=1):
            if line.strip():
                start = start if lines else number
                lines.append(line)
            elif lines:
                documents.append({"text": "\n".join(lines), "line": start})
                lines = []
    if not documents:
        raise TaskError(f"{path}: the task is empty (no text); add the text to measure perplexity on")
    return tuple(documents)
