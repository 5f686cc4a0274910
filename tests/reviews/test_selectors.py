"""Review reads: the actions a page offers are exactly those the services accept, the run list's
filter by state, and the conversation's order."""

import itertools

from django.core.exceptions import PermissionDenied, ValidationError

from mergehub.reviews import services
from mergehub.reviews.models import Review, ReviewState
from mergehub.reviews.selectors import conversation, filter_runs_by_state, permissions, review_panel
from mergehub.runs.models import MergeRun

from .conftest import make_run

ATTEMPTS = {  # permission name → the service call it promises will succeed
    "request": lambda run, user: services.request_review(run=run, user=user),
    "withdraw": lambda run, user: services.withdraw_request(run=run, user=user),
    "approve": lambda run, user: services.decide(run=run, user=user, decision="approve"),
    "request_changes": lambda run, user: services.decide(run=run, user=user, decision="request_changes",
                                                         body="please"),
    "comment": lambda run, user: services.add_comment(run=run, user=user, body="hi"),
}


def test_offered_actions_are_exactly_the_accepted_ones(acme, alice, bob, carol, dave, mallory):
    """Every state × team policy × run status × user (admin, viewer, author, member, other team)
    × action: the page offers it exactly when the service accepts it. (One test, not a
    parametrisation: the five users are made once.)"""
    for state, self_approval, status in itertools.product(ReviewState.values, [False, True], ["succeeded", "failed"]):
        acme.allow_self_approval = self_approval
        acme.save()
        for user in (alice, bob, carol, dave, mallory):
            for name, attempt in ATTEMPTS.items():
                run = make_run(acme, carol, status=status)
                if state != ReviewState.NOT_REQUESTED:
                    Review.objects.create(run=run, state=state)
                run = MergeRun.objects.select_related("team").get(pk=run.pk)
                offered = getattr(permissions(user=user, run=run, state=state), name)
                try:
                    attempt(run, user)
                    accepted = True
                except (PermissionDenied, ValidationError):
                    accepted = False
                assert offered == accepted, (user.username, name, state, self_approval, status)


def test_the_author_is_told_why_approve_is_missing(acme, carol, carols_run):
    Review.objects.create(run=carols_run, state=ReviewState.REQUESTED)
    may = permissions(user=carol, run=carols_run, state=ReviewState.REQUESTED)
    assert not may.approve and may.request_changes
    assert "does not allow authors to approve their own runs" in may.why_not_approve


def test_filter_by_state_counts_never_requested_as_none(acme, carol, dave):
    fresh, withdrawn, requested, approved = (make_run(acme, carol, name=n) for n in ("a", "b", "c", "d"))
    Review.objects.create(run=withdrawn, state=ReviewState.NOT_REQUESTED)
    Review.objects.create(run=requested, state=ReviewState.REQUESTED)
    Review.objects.create(run=approved, state=ReviewState.APPROVED)
    runs = MergeRun.objects.all()
    assert set(filter_runs_by_state(runs, "none")) == {fresh, withdrawn}
    assert list(filter_runs_by_state(runs, "requested")) == [requested]
    assert list(filter_runs_by_state(runs, "approved")) == [approved]
    assert not filter_runs_by_state(runs, "changes_requested").exists()


def test_panel_holds_the_conversation_in_order(carols_run, carol, dave, bob):
    services.request_review(run=carols_run, user=carol, body="first")
    services.add_comment(run=carols_run, user=bob, body="second")
    services.decide(run=carols_run, user=dave, decision="approve", body="third")
    assert [e.body for e in conversation(carols_run)] == ["first", "second", "third"]
    panel = review_panel(user=bob, run=carols_run)
    assert panel["state"] == "approved" and panel["state_label"] == "Approved"
    assert panel["may"].comment and not panel["may"].approve
