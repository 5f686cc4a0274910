"""Writes for evaluation tasks: register a task file (a path under the team's roots, or an
upload kept in the team's tasks folder), the demo family's built-in tasks, and deletion.

A task is parsed and hashed by mergehub.scoring at registration, so a malformed file is refused
with its line number before any row is written; the evaluation job reads it again and refuses
it if its content hash moved since.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.registry.roots import resolve_task_file, tasks_dir
from mergehub import scoring
from mergehub.scoring.tasks import SUFFIX_KINDS

from .models import EvalTask

UPLOAD_SUFFIXES = {".jsonl", ".txt"}


def _check_name(team: Team, name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the task a name."})
    if len(name) > 100:
        raise ValidationError({"name": "A task name has at most 100 characters."})
    if EvalTask.objects.filter(team=team, name=name).exists():
        raise ValidationError({"name": f"{team.name} already has a task named {name!r}."})
    return name


def _check_kind(kind: str) -> str:
    kind = kind or "auto"
    if kind != "auto" and kind not in EvalTask.Kind.values:
        raise ValidationError({"kind": f"Kind must be auto or one of {', '.join(EvalTask.Kind.values)}."})
    if kind == EvalTask.Kind.LM_EVAL and not settings.MERGEHUB_ALLOW_LM_EVAL_TASKS:
        raise ValidationError({"kind": "lm-evaluation-harness tasks are off on this site: their YAML can "
                                       "name any file on the workers as data. A site admin can allow them "
                                       "with MERGEHUB_ALLOW_LM_EVAL_TASKS=true."})
    return kind


def _store_upload(team: Team, upload) -> Path:
    """Write an uploaded file into the team's tasks folder, named by its content hash."""
    limit = settings.MERGEHUB_TASK_MAX_BYTES
    suffix = Path(upload.name or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ValidationError({"upload": "Upload a .jsonl task (prompt/target or prompt/choices/answer) or a "
                                         ".txt text for perplexity."})
    if upload.size > limit:
        raise ValidationError({"upload": f"The file has {upload.size} bytes; the limit is {limit}."})
    folder = tasks_dir(team)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in upload.chunks():
                digest.update(chunk)
                out.write(chunk)
        target = folder / f"{digest.hexdigest()}{suffix}"
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _parse(path: Path, *, name: str, kind: str, task_settings: dict | None, field: str) -> scoring.Task:
    try:
        return scoring.load_task(path, name=name, kind=kind, settings=task_settings,
                                 max_bytes=settings.MERGEHUB_TASK_MAX_BYTES)
    except scoring.TaskError as err:
        raise ValidationError({field: str(err)}) from None


def register_task(*, team: Team, user, name: str, path: str | None = None, upload=None, kind: str = "auto",
                  task_settings: dict | None = None, description: str = "") -> EvalTask:
    """Register a task from a file under the team's roots (``path``) or an uploaded file."""
    require_role(user=user, team=team, role=Role.MEMBER, action="register evaluation tasks")
    name = _check_name(team, name)
    kind = _check_kind(kind)
    if bool(path and path.strip()) == bool(upload):
        raise ValidationError({"path": "Give either the path of a task file or upload one (not both)."})
    if upload is not None:
        field, source, real = "upload", EvalTask.Source.UPLOAD, _store_upload(team, upload)
    else:
        field, source, real = "path", EvalTask.Source.LOCAL, resolve_task_file(path, team, "path")
    if kind == "auto" and SUFFIX_KINDS.get(real.suffix.lower()) == EvalTask.Kind.LM_EVAL:
        _check_kind(EvalTask.Kind.LM_EVAL)  # before parsing: a refused YAML's data_files are never looked at
    parsed = _parse(real, name=name, kind=kind, task_settings=task_settings, field=field)
    if parsed.kind == EvalTask.Kind.LM_EVAL:
        _check_kind(parsed.kind)
    return _create(team, user, parsed, source=source, description=description)


def _create(team: Team, user, parsed: scoring.Task, *, source: str, description: str = "") -> EvalTask:
    return EvalTask.objects.create(
        team=team, name=parsed.name, description=(description or "").strip()[:300], kind=parsed.kind,
        metric=parsed.metric, higher_is_better=parsed.higher_is_better, settings=parsed.settings,
        settings_key=parsed.settings_key(), content_hash=parsed.content_hash,
        n_examples=len(parsed.examples), source=source, path=str(parsed.path), added_by=user)


@transaction.atomic
def ensure_builtin_tasks(team: Team, user=None) -> list[EvalTask]:
    """The demo family's four tasks (mergehub.family), registered once per team."""
    from mergehub.family import BUILTIN_TASKS

    tasks = []
    for spec in BUILTIN_TASKS:
        task = EvalTask.objects.filter(team=team, name=spec["name"]).first()
        if task is None:
            parsed = scoring.load_task(spec["path"], name=spec["name"], kind=spec["kind"], settings=spec["settings"])
            task = _create(team, user, parsed, source=EvalTask.Source.BUILTIN, description=spec.get("description", ""))
        tasks.append(task)
    return tasks


def delete_task(*, task: EvalTask, user) -> None:
    """Delete a task; its scores stay (they name the task and its content hash)."""
    require_role(user=user, team=task.team, role=Role.MEMBER, action="delete evaluation tasks")
    task.delete()


def load_registered(task: EvalTask) -> scoring.Task:
    """The task as registered, parsed again; refused if the file changed since registration."""
    parsed = scoring.load_task(task.path, name=task.name, kind=task.kind, settings=task.settings,
                               max_bytes=settings.MERGEHUB_TASK_MAX_BYTES)
    if parsed.content_hash != task.content_hash:
        raise scoring.TaskError(f"task {task.name}: its file {task.path} changed since it was registered "
                                f"(content hash {parsed.content_hash[:12]}, registered {task.content_hash[:12]}); "
                                "register it again under a new name")
    return parsed
