"""Reads for run review: a run's state and conversation, and what a user may do in it (the same
rules ``services`` enforces, so a page offers exactly the actions that will succeed)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from mergehub.accounts.models import Role
from mergehub.accounts.selectors import membership_for
from mergehub.runs.models import MergeRun

from .models import Entry, Review, ReviewState


def state_of(run: MergeRun) -> str:
    """The run's ``ReviewState`` value ("none" before any request)."""
    review = Review.objects.filter(run=run).only("state").first()
    return review.state if review is not None else ReviewState.NOT_REQUESTED.value


def conversation(run: MergeRun) -> QuerySet[Entry]:
    """The run's comments, requests and decisions, oldest first."""
    return Entry.objects.filter(run=run).select_related("author").order_by("created_at", "pk")


def filter_runs_by_state(runs: QuerySet[MergeRun], state: str) -> QuerySet[MergeRun]:
    """``runs`` whose review is in ``state`` (a ``ReviewState`` value; "none" includes runs never
    put up for review)."""
    if state == ReviewState.NOT_REQUESTED:
        return runs.filter(Q(review__isnull=True) | Q(review__state=state))
    return runs.filter(review__state=state)


def awaiting_review(*, user, team) -> int:
    """How many of ``team``'s runs wait for a review ``user`` could give (requested, not theirs);
    0 for a team the user is not in."""
    if team is None or membership_for(user=user, team=team) is None:
        return 0
    return Review.objects.filter(run__team=team, state=ReviewState.REQUESTED).exclude(run__author=user).count()


@dataclass
class Permissions:
    """What ``user`` may do in ``run``'s review now; ``why_not_approve`` says why "approve" is
    missing when the user could otherwise decide."""

    comment: bool = False
    request: bool = False
    withdraw: bool = False
    approve: bool = False
    request_changes: bool = False
    why_not_approve: str = ""
    delete_any_comment: bool = False


def permissions(*, user, run: MergeRun, state: str) -> Permissions:
    """The review actions open to ``user`` on ``run`` in review ``state``."""
    membership = membership_for(user=user, team=run.team)
    if membership is None:
        return Permissions()
    is_member, is_admin = membership.has_role(Role.MEMBER), membership.has_role(Role.ADMIN)
    owns = is_member and (run.author_id == user.pk or is_admin)
    may = Permissions(comment=True, delete_any_comment=is_admin)
    may.request = (owns and run.status == MergeRun.Status.SUCCEEDED
                   and state in (ReviewState.NOT_REQUESTED, ReviewState.CHANGES_REQUESTED))
    may.withdraw = owns and state == ReviewState.REQUESTED
    open_for_decisions = is_member and state != ReviewState.NOT_REQUESTED
    may.request_changes = open_for_decisions
    is_author = run.author_id is not None and run.author_id == user.pk
    may.approve = open_for_decisions and not (is_author and not run.team.allow_self_approval)
    if open_for_decisions and not may.approve:
        may.why_not_approve = (f"You are this run's author, and {run.team.name} does not allow authors to "
                               "approve their own runs.")
    return may


def review_panel(*, user, run: MergeRun, state: str | None = None) -> dict:
    """What the report's review section shows: state, conversation and the user's actions
    (``state``: the run's review state, when the caller has read it already)."""
    state = state or state_of(run)
    return {"state": state, "state_label": ReviewState(state).label, "entries": list(conversation(run)),
            "may": permissions(user=user, run=run, state=state)}
