"""Writes for run review: request a review, approve or request changes, withdraw a request,
comment, delete a comment.

The rules: any member of the run's team, viewers included, comments. A run's author (or a team
admin, for runs whose author has left) requests review of a succeeded run, and may withdraw the
request while it is open. Members and admins decide: approve, or request changes with a comment
saying which; the newest decision is the run's state. A run's author approves it only where the
team allows it (``Team.allow_self_approval``). Each write is one transaction that locks the
run's review row, so two decisions at the same moment are applied one after the other, and the
audit log records every request, decision and withdrawal with it.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from mergehub.accounts.models import Role
from mergehub.accounts.selectors import has_role
from mergehub.accounts.services import require_role
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record
from mergehub.runs.models import MergeRun

from .models import BODY_MAX_CHARS, Entry, EntryKind, Review, ReviewState

DECISIONS = {  # what a reviewer chooses → (the conversation's entry, the new state, audit action)
    "approve": (EntryKind.APPROVED, ReviewState.APPROVED, AuditEvent.Action.REVIEW_APPROVED),
    "request_changes": (EntryKind.CHANGES_REQUESTED, ReviewState.CHANGES_REQUESTED,
                        AuditEvent.Action.REVIEW_CHANGES_REQUESTED),
}


@transaction.atomic
def add_comment(*, run: MergeRun, user, body: str) -> Entry:
    """``user`` comments on ``run`` (any role of the run's team)."""
    require_role(user=user, team=run.team, role=Role.VIEWER, action="comment on its runs")
    body = _body(body)
    if not body:
        raise ValidationError({"body": "Write a comment first."})
    return _entry(run, user, EntryKind.COMMENT, body)


@transaction.atomic
def request_review(*, run: MergeRun, user, body: str = "") -> Review:
    """``user`` (the run's author, or a team admin) asks the team to review ``run``."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="request reviews")
    if run.author_id != user.pk and not has_role(user=user, team=run.team, role=Role.ADMIN):
        raise PermissionDenied("Only the run's author or a team admin requests its review.")
    if run.status != MergeRun.Status.SUCCEEDED:
        raise ValidationError(f"Run #{run.pk} is {run.get_status_display().lower()}: only a run that "
                              "succeeded has a merged model to review.")
    review = _locked_review(run)
    if review.state == ReviewState.REQUESTED:
        raise ValidationError("A review of this run is already requested.")
    if review.state == ReviewState.APPROVED:
        raise ValidationError("This run is already approved.")
    _change(run, review, user, EntryKind.REQUESTED, ReviewState.REQUESTED, AuditEvent.Action.REVIEW_REQUESTED, body)
    return review


@transaction.atomic
def decide(*, run: MergeRun, user, decision: str, body: str = "") -> Review:
    """``user`` (a member or admin) approves ``run`` or requests changes to it
    (``decision``: "approve" or "request_changes"; the latter needs a comment)."""
    if decision not in DECISIONS:
        raise ValidationError(f"Unknown review decision {decision!r}; choose one of {', '.join(DECISIONS)}.")
    kind, state, action = DECISIONS[decision]
    require_role(user=user, team=run.team, role=Role.MEMBER,
                 action="approve runs or request changes (viewers comment)")
    if (decision == "approve" and run.author_id is not None and run.author_id == user.pk
            and not run.team.allow_self_approval):
        raise PermissionDenied(f"You are the author of run #{run.pk}, and {run.team.name} does not allow "
                               "authors to approve their own runs: another member has to.")
    body = _body(body)
    if decision == "request_changes" and not body:
        raise ValidationError({"body": "Say which changes you are asking for in the comment."})
    review = _locked_review(run)
    if review.state == ReviewState.NOT_REQUESTED:
        raise ValidationError("No review of this run is requested: its author requests one first.")
    _change(run, review, user, kind, state, action, body)
    return review


@transaction.atomic
def withdraw_request(*, run: MergeRun, user) -> Review:
    """``user`` (the run's author, or a team admin) withdraws an open review request."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="withdraw review requests")
    if run.author_id != user.pk and not has_role(user=user, team=run.team, role=Role.ADMIN):
        raise PermissionDenied("Only the run's author or a team admin withdraws its review request.")
    review = _locked_review(run)
    if review.state != ReviewState.REQUESTED:
        raise ValidationError("No open review request to withdraw.")
    _change(run, review, user, EntryKind.WITHDRAWN, ReviewState.NOT_REQUESTED, AuditEvent.Action.REVIEW_WITHDRAWN, "")
    return review


@transaction.atomic
def delete_comment(*, entry: Entry, user) -> None:
    """Delete a plain comment: its author, or a team admin. Requests and decisions stay."""
    run = entry.run
    require_role(user=user, team=run.team, role=Role.VIEWER, action="delete comments")
    if entry.kind != EntryKind.COMMENT:
        raise ValidationError("Review requests and decisions stay in the history; only comments are deleted.")
    if entry.author_id != user.pk and not has_role(user=user, team=run.team, role=Role.ADMIN):
        raise PermissionDenied("Only a comment's author or a team admin deletes it.")
    entry.delete()


# --- helpers ----------------------------------------------------------------------------------

def _body(body: str | None) -> str:
    body = (body or "").strip()
    if len(body) > BODY_MAX_CHARS:
        raise ValidationError({"body": f"A comment has at most {BODY_MAX_CHARS:,} characters; this one has {len(body):,}."})
    return body


def _locked_review(run: MergeRun) -> Review:
    """The run's review row, locked until the transaction ends (made on first use)."""
    review = Review.objects.select_for_update().filter(run=run).first()
    if review is not None:
        return review
    try:
        with transaction.atomic():
            Review.objects.create(run=run)
    except IntegrityError:  # made by a concurrent request since the read above
        pass
    return Review.objects.select_for_update().get(run=run)


def _change(run: MergeRun, review: Review, user, kind: str, state: str, action: str, body: str) -> None:
    was, review.state = review.state, state
    review.save(update_fields=["state", "updated_at"])
    _entry(run, user, kind, body)
    record(team=run.team, actor=user, action=action, target=run, label=run.name,
           details={"from": was, "to": state})


def _entry(run: MergeRun, user, kind: str, body: str) -> Entry:
    return Entry.objects.create(run=run, author=user, author_name=user.get_username(), kind=kind, body=body)
