"""Writes for the audit log: ``record``, called by the services that change a team's state,
inside their transaction and after their write, so the event is committed (or rolled back)
with the change itself and a refused action records nothing."""

from __future__ import annotations

from django.db import models

from mergehub.accounts.models import Team

from .models import AuditEvent

SYSTEM_ACTOR = "MergeHub"  # the actor's name when no account acted (Django admin actions, commands)
LABEL_MAX = AuditEvent._meta.get_field("target_label").max_length


def record(*, team: Team, actor, action: str, target: models.Model | None = None, label: str = "",
           details: dict | None = None) -> AuditEvent:
    """Record that ``actor`` (a user, or None for MergeHub itself) did ``action`` (an
    ``AuditEvent.Action``) in ``team`` to ``target``.

    The target is kept as text (its kind, id and ``label``, by default ``str(target)``) so the
    event outlives it; pass it before deleting it. ``details`` is JSON: role changes, retried ids.
    """
    if action not in AuditEvent.Action.values:
        raise ValueError(f"unknown audit action {action!r}")
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEvent.objects.create(
        team=team, actor=actor if is_user else None,
        actor_name=actor.get_username() if is_user else SYSTEM_ACTOR,
        action=action,
        target_type=target_type_of(target) if target is not None else "",
        target_id=str(target.pk) if target is not None and target.pk is not None else "",
        target_label=(label or (str(target) if target is not None else ""))[:LABEL_MAX],
        details=details or {})


def target_type_of(target: models.Model) -> str:
    """A short name of the target's kind: "checkpoint", "mergerun" → "run", "apitoken" → "token"."""
    name = target._meta.model_name
    return {"mergerun": "run", "apitoken": "token"}.get(name, name)
