"""Review writes: who may request, decide, withdraw and comment, the states they lead to, the
conversation they leave and the audit events they record."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from mergehub.audit.models import AuditEvent
from mergehub.reviews import services
from mergehub.reviews.models import Entry, EntryKind, Review, ReviewState
from mergehub.reviews.selectors import state_of

from .conftest import make_run


def _kinds(run):
    return list(Entry.objects.filter(run=run).values_list("author_name", "kind"))


def test_request_then_approve_by_another_member(carols_run, carol, dave):
    services.request_review(run=carols_run, user=carol, body="Budget 0.5, ready for a look.")
    assert state_of(carols_run) == ReviewState.REQUESTED
    services.decide(run=carols_run, user=dave, decision="approve", body="LGTM")
    assert state_of(carols_run) == ReviewState.APPROVED
    assert _kinds(carols_run) == [("carol", EntryKind.REQUESTED), ("dave", EntryKind.APPROVED)]
    assert list(Entry.objects.filter(run=carols_run).values_list("body", flat=True)) == [
        "Budget 0.5, ready for a look.", "LGTM"]
    events = list(AuditEvent.objects.filter(target_type="run", target_id=str(carols_run.pk))
                  .order_by("created_at", "pk").values_list("actor_name", "action", "details"))
    assert events == [("carol", "review.requested", {"from": "none", "to": "requested"}),
                      ("dave", "review.approved", {"from": "requested", "to": "approved"})]
    assert set(AuditEvent.objects.values_list("target_label", flat=True)) == {"carol's merge"}


def test_changes_requested_then_requested_again(carols_run, carol, dave):
    services.request_review(run=carols_run, user=carol)
    with pytest.raises(ValidationError, match="Say which changes"):
        services.decide(run=carols_run, user=dave, decision="request_changes", body="  ")
    assert state_of(carols_run) == ReviewState.REQUESTED  # the refused decision changed nothing
    services.decide(run=carols_run, user=dave, decision="request_changes", body="Try density 0.7.")
    assert state_of(carols_run) == ReviewState.CHANGES_REQUESTED
    services.request_review(run=carols_run, user=carol, body="Done, see the note.")
    assert state_of(carols_run) == ReviewState.REQUESTED
    assert AuditEvent.objects.filter(action="review.changes_requested").count() == 1


def test_author_cannot_approve_own_run_unless_the_team_allows(carols_run, carol, acme):
    services.request_review(run=carols_run, user=carol)
    with pytest.raises(PermissionDenied, match="does not allow authors"):
        services.decide(run=carols_run, user=carol, decision="approve")
    assert state_of(carols_run) == ReviewState.REQUESTED
    acme.allow_self_approval = True
    acme.save()
    carols_run.refresh_from_db()
    services.decide(run=carols_run, user=carol, decision="approve")
    assert state_of(carols_run) == ReviewState.APPROVED


def test_viewers_comment_but_never_decide_or_request(carols_run, carol, bob):
    services.request_review(run=carols_run, user=carol)
    services.add_comment(run=carols_run, user=bob, body="Looks *good* to me")
    for decision in ("approve", "request_changes"):
        with pytest.raises(PermissionDenied, match="member role"):
            services.decide(run=carols_run, user=bob, decision=decision, body="x")
    bobs_run = make_run(carols_run.team, bob)
    with pytest.raises(PermissionDenied):
        services.request_review(run=bobs_run, user=bob)
    assert state_of(carols_run) == ReviewState.REQUESTED
    assert _kinds(carols_run) == [("carol", "requested"), ("bob", "comment")]


def test_other_teams_cannot_touch_the_review(carols_run, carol, mallory):
    services.request_review(run=carols_run, user=carol)
    with pytest.raises(PermissionDenied):
        services.add_comment(run=carols_run, user=mallory, body="hi")
    with pytest.raises(PermissionDenied):
        services.decide(run=carols_run, user=mallory, decision="approve")
    assert Entry.objects.filter(run=carols_run).count() == 1


def test_only_author_or_admin_requests_and_withdraws(carols_run, carol, dave, alice):
    with pytest.raises(PermissionDenied, match="author or a team admin"):
        services.request_review(run=carols_run, user=dave)
    services.request_review(run=carols_run, user=alice)  # an admin may (the author may have left)
    with pytest.raises(PermissionDenied, match="author or a team admin"):
        services.withdraw_request(run=carols_run, user=dave)
    services.withdraw_request(run=carols_run, user=carol)
    assert state_of(carols_run) == ReviewState.NOT_REQUESTED
    with pytest.raises(ValidationError, match="No open review request"):
        services.withdraw_request(run=carols_run, user=carol)
    assert AuditEvent.objects.filter(action="review.withdrawn").count() == 1


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_only_succeeded_runs_are_put_up_for_review(acme, carol, status):
    run = make_run(acme, carol, status=status)
    with pytest.raises(ValidationError, match="only a run that succeeded"):
        services.request_review(run=run, user=carol)
    assert not Review.objects.filter(run=run).exists()
    assert not AuditEvent.objects.filter(action="review.requested").exists()


def test_states_that_refuse_a_step(carols_run, carol, dave):
    with pytest.raises(ValidationError, match="No review of this run is requested"):
        services.decide(run=carols_run, user=dave, decision="approve")
    services.request_review(run=carols_run, user=carol)
    with pytest.raises(ValidationError, match="already requested"):
        services.request_review(run=carols_run, user=carol)
    services.decide(run=carols_run, user=dave, decision="approve")
    with pytest.raises(ValidationError, match="already approved"):
        services.request_review(run=carols_run, user=carol)
    with pytest.raises(ValidationError, match="Unknown review decision"):
        services.decide(run=carols_run, user=dave, decision="merge it")
    # a later reviewer may still ask for changes: the newest decision is the state
    services.decide(run=carols_run, user=dave, decision="request_changes", body="Found a regression on sort.")
    assert state_of(carols_run) == ReviewState.CHANGES_REQUESTED


def test_comments_are_checked_and_deleted_by_author_or_admin(carols_run, carol, dave, alice, bob):
    with pytest.raises(ValidationError, match="Write a comment"):
        services.add_comment(run=carols_run, user=carol, body="   ")
    with pytest.raises(ValidationError, match="at most 10,000 characters"):
        services.add_comment(run=carols_run, user=carol, body="x" * 10_001)
    mine = services.add_comment(run=carols_run, user=bob, body="a viewer's comment")
    with pytest.raises(PermissionDenied, match="author or a team admin"):
        services.delete_comment(entry=mine, user=dave)
    services.delete_comment(entry=mine, user=bob)
    other = services.add_comment(run=carols_run, user=dave, body="dave's")
    services.delete_comment(entry=other, user=alice)
    assert not Entry.objects.filter(run=carols_run).exists()
    services.request_review(run=carols_run, user=carol)
    with pytest.raises(ValidationError, match="stay in the history"):
        services.delete_comment(entry=Entry.objects.get(run=carols_run), user=carol)
