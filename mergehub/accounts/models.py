"""Teams and memberships: every other object belongs to a team, and roles gate what a member may do."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"  # reads everything of the team
    MEMBER = "member", "Member"  # also registers checkpoints and runs merges
    ADMIN = "admin", "Admin"  # also manages members and the registry


ROLE_ORDER = [Role.VIEWER.value, Role.MEMBER.value, Role.ADMIN.value]


def role_at_least(role: str, required: str) -> bool:
    """viewer < member < admin."""
    return ROLE_ORDER.index(role) >= ROLE_ORDER.index(required)


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # whether a run's author may approve their own run in review (mergehub/reviews); off, a run
    # needs another member's approval
    allow_self_approval = models.BooleanField(default=False)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership",
                                     related_name="teams")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="unique_membership"),
            models.CheckConstraint(condition=models.Q(role__in=ROLE_ORDER), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    def has_role(self, required: str) -> bool:
        return role_at_least(self.role, required)
