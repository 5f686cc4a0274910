"""API tokens: team-scoped credentials for the REST API, hashed at rest.

A token's text is ``mh_<8-char public id>_<43-char secret>``. Only the public part (``prefix``,
``mh_<id>``) and the sha256 of the secret (``digest``) are stored; the plain text is shown once,
when the token is created (see tokens.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from mergehub.accounts.models import Team


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. ci-nightly.")
    prefix = models.CharField(max_length=16, unique=True, help_text="The public part: mh_ and the token's id.")
    digest = models.CharField(max_length=64, help_text="sha256 (hex) of the secret part; never the token itself.")
    can_write = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "user"], name="apitoken_team_user")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    @property
    def access_label(self) -> str:
        return "read-write" if self.can_write else "read-only"
