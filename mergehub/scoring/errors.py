"""The error a bad task file raises: one line naming the file, the line, what is wrong and what
to do, printed by the CLI without a traceback and shown by the web app in a form."""

from __future__ import annotations

from mergehub.engine.api import MergeHubError


class TaskError(MergeHubError):
    """A task file (or a task setting) cannot be used for evaluation."""


def where(path, line: int | None = None) -> str:
    """``path`` or ``path, line N``: the prefix of every TaskError message."""
    return f"{path}, line {line}" if line is not None else str(path)
