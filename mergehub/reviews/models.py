"""Team review of merge runs: a run's review state, and the conversation on its report (comments
and review decisions, oldest first). Written only by ``services``; the pages read them."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mergehub.runs.models import MergeRun

BODY_MAX_CHARS = 10_000  # of a comment (Markdown source)


class ReviewState(models.TextChoices):
    NOT_REQUESTED = "none", "Not requested"  # never requested, or the request was withdrawn
    REQUESTED = "requested", "Review requested"
    APPROVED = "approved", "Approved"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"


class EntryKind(models.TextChoices):
    """What one step of the conversation is; the label reads after the author's name."""
    COMMENT = "comment", "commented"
    REQUESTED = "requested", "requested review"
    APPROVED = "approved", "approved"
    CHANGES_REQUESTED = "changes_requested", "requested changes"
    WITHDRAWN = "withdrawn", "withdrew the review request"


class Review(models.Model):
    """Where a run's review stands. A run has this row from its first review request on; a run
    without one is ``NOT_REQUESTED``. The run list filters on ``state``."""

    run = models.OneToOneField(MergeRun, on_delete=models.CASCADE, primary_key=True, related_name="review")
    state = models.CharField(max_length=20, choices=ReviewState.choices, default=ReviewState.NOT_REQUESTED)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["state"], name="review_state")]
        constraints = [models.CheckConstraint(condition=models.Q(state__in=ReviewState.values),
                                              name="review_state_valid")]

    def __str__(self) -> str:
        return f"run #{self.run_id}: {self.get_state_display()}"


class Entry(models.Model):
    """One step of a run's review conversation: a comment, or a review request, decision or
    withdrawal with its optional comment. Append-only except that a comment's author (or a team
    admin) may delete a plain comment."""

    Kind = EntryKind

    run = models.ForeignKey(MergeRun, on_delete=models.CASCADE, related_name="review_entries")
    # None once the account is deleted; author_name keeps who wrote it
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="review_entries")
    author_name = models.CharField(max_length=150)
    kind = models.CharField(max_length=20, choices=EntryKind.choices)
    body = models.TextField(blank=True, max_length=BODY_MAX_CHARS)  # Markdown, rendered safely
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["run", "created_at", "id"], name="review_entry_run_order")]
        constraints = [models.CheckConstraint(condition=models.Q(kind__in=EntryKind.values),
                                              name="review_entry_kind_valid")]

    def __str__(self) -> str:
        return f"{self.author_name} {self.get_kind_display()} on run #{self.run_id}"
