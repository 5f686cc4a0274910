"""The audit log: one row per change a team member made to the team's registry, runs, API tokens
or members (who, what, when, to what). Written by ``services.record`` from inside the service
that made the change, so an event exists exactly when the change was committed."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mergehub.accounts.models import Team


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        TEAM_CREATED = "team.created", "Team created"
        TEAM_SETTINGS_CHANGED = "team.settings_changed", "Team settings changed"
        MEMBER_ADDED = "member.added", "Member added"
        MEMBER_ROLE_CHANGED = "member.role_changed", "Member's role changed"
        MEMBER_REMOVED = "member.removed", "Member removed"
        MEMBER_LEFT = "member.left", "Member left"
        TOKEN_CREATED = "token.created", "API token created"
        TOKEN_REVOKED = "token.revoked", "API token revoked"
        CHECKPOINT_REGISTERED = "checkpoint.registered", "Checkpoint registered"
        CHECKPOINT_REINDEXED = "checkpoint.reindexed", "Checkpoint re-indexed"
        CHECKPOINT_DELETED = "checkpoint.deleted", "Checkpoint deleted"
        RUN_STARTED = "run.started", "Run started"
        RUN_CANCELLED = "run.cancelled", "Run cancelled"
        RUN_RETRIED = "run.retried", "Run retried"
        REVIEW_REQUESTED = "review.requested", "Review requested"
        REVIEW_APPROVED = "review.approved", "Run approved"
        REVIEW_CHANGES_REQUESTED = "review.changes_requested", "Changes requested"
        REVIEW_WITHDRAWN = "review.withdrawn", "Review request withdrawn"
        MODEL_PUSHED = "model.pushed", "Merged model pushed to the Hub"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="audit_events")
    # The account that acted; None once that account is deleted, or for MergeHub itself (the
    # Django admin's actions, management commands). actor_name keeps who it was either way.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="audit_events")
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=40, choices=Action.choices)
    # What the action was done to, as text: the target may be deleted since (a checkpoint, a member).
    target_type = models.CharField(max_length=40, blank=True)  # "checkpoint", "run", "token", "user", "team"
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)  # e.g. {"from": "viewer", "to": "member"}
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["team", "-created_at", "-id"], name="audit_team_newest")]

    @property
    def detail_items(self) -> list[tuple[str, object]]:
        """The details by key name: PostgreSQL's jsonb keeps keys in its own order, not ours."""
        return sorted((self.details or {}).items())

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target_type} {self.target_label}"
