"""The audit log's writes (issue 25, item 3): every recorded action of the services makes exactly
one event with the right actor, team, action and target; a refused or failed action makes none.
Personas: tests/conftest.py (alice admin of acme, bob viewer, carol member, mallory admin of rival).
"""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from mergehub.accounts import services as accounts
from mergehub.accounts.models import Membership, Role
from mergehub.api import tokens
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import SYSTEM_ACTOR, record
from mergehub.registry import services as registry
from mergehub.registry.models import Checkpoint
from mergehub.runs import services as runs

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


@pytest.fixture
def dave(django_user_model):
    """An account in no team."""
    return django_user_model.objects.create_user(username="dave", email="dave@example.com", password="x")


class Recorded:
    """The events recorded since it was made: ``recorded.new()``."""

    def __init__(self):
        self.last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    def new(self) -> list[AuditEvent]:
        return list(AuditEvent.objects.filter(pk__gt=self.last).order_by("pk"))


def the_one(recorded: Recorded) -> AuditEvent:
    events = recorded.new()
    assert len(events) == 1, [(e.action, e.target_label) for e in events]
    return events[0]


def assert_event(event, *, team, actor, action, target_type, target_id, label=None):
    assert (event.team, event.actor, event.actor_name, event.action) == (team, actor, actor.get_username(), action)
    assert (event.target_type, event.target_id) == (target_type, str(target_id))
    if label is not None:
        assert event.target_label == label
    assert event.created_at is not None


# --- teams and members ------------------------------------------------------------------------

def test_create_team(dave):
    recorded = Recorded()
    team = accounts.create_team(name="Dave's lab", owner=dave)
    assert_event(the_one(recorded), team=team, actor=dave, action=Action.TEAM_CREATED, target_type="team",
                 target_id=team.pk, label="Dave's lab")


def test_invite_member(alice, acme, dave):
    recorded = Recorded()
    accounts.invite_member(team=acme, username="dave", role=Role.MEMBER, by=alice)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.MEMBER_ADDED, target_type="user", target_id=dave.pk,
                 label="dave")
    assert event.details == {"role": "member"}


def test_add_member_new_and_existing(alice, acme, bob, dave):
    recorded = Recorded()
    accounts.add_member(team=acme, user=dave, role=Role.VIEWER, by=alice)
    assert_event(the_one(recorded), team=acme, actor=alice, action=Action.MEMBER_ADDED, target_type="user",
                 target_id=dave.pk)
    recorded = Recorded()
    accounts.add_member(team=acme, user=bob, role=Role.MEMBER, by=alice)  # already in: a role change
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.MEMBER_ROLE_CHANGED, target_type="user",
                 target_id=bob.pk)
    assert event.details == {"from": "viewer", "to": "member"}


def test_change_role(alice, acme, bob):
    recorded = Recorded()
    accounts.change_role(membership=Membership.objects.get(team=acme, user=bob), role=Role.ADMIN, by=alice)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.MEMBER_ROLE_CHANGED, target_type="user",
                 target_id=bob.pk, label="bob")
    assert event.details == {"from": "viewer", "to": "admin"}


def test_change_to_the_same_role_records_nothing(alice, acme, bob):
    recorded = Recorded()
    accounts.change_role(membership=Membership.objects.get(team=acme, user=bob), role=Role.VIEWER, by=alice)
    assert recorded.new() == []


def test_remove_member(alice, acme, carol):
    recorded = Recorded()
    accounts.remove_member(team=acme, user=carol, by=alice)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.MEMBER_REMOVED, target_type="user",
                 target_id=carol.pk, label="carol")
    assert event.details == {"role": "member"}


def test_leave_team(acme, alice, bob):
    recorded = Recorded()
    accounts.leave_team(team=acme, user=bob)
    assert_event(the_one(recorded), team=acme, actor=bob, action=Action.MEMBER_LEFT, target_type="user",
                 target_id=bob.pk, label="bob")


@pytest.mark.parametrize("refused", [
    lambda w: accounts.invite_member(team=w["acme"], username="dave", role=Role.VIEWER, by=w["carol"]),
    lambda w: accounts.invite_member(team=w["acme"], username="nobody", role=Role.VIEWER, by=w["alice"]),
    lambda w: accounts.invite_member(team=w["acme"], username="bob", role=Role.VIEWER, by=w["alice"]),
    lambda w: accounts.change_role(membership=Membership.objects.get(user=w["bob"]), role=Role.ADMIN, by=w["carol"]),
    lambda w: accounts.change_role(membership=Membership.objects.get(user=w["alice"]), role=Role.VIEWER,
                                   by=w["alice"]),  # the last admin
    lambda w: accounts.remove_member(team=w["acme"], user=w["bob"], by=w["mallory"]),
    lambda w: accounts.leave_team(team=w["acme"], user=w["alice"]),  # the last admin
    lambda w: accounts.add_member(team=w["acme"], user=w["dave"], role=Role.VIEWER, by=w["bob"]),
    lambda w: accounts.create_team(name="Acme", owner=w["dave"]),  # taken
], ids=["invite-by-member", "invite-unknown", "invite-existing", "role-by-member", "demote-last-admin",
        "remove-by-other-team", "last-admin-leaves", "add-by-viewer", "team-name-taken"])
def test_refused_member_changes_record_nothing(refused, acme, alice, bob, carol, mallory, dave):
    recorded = Recorded()
    with pytest.raises((PermissionDenied, ValidationError)):
        refused({"acme": acme, "alice": alice, "bob": bob, "carol": carol, "mallory": mallory, "dave": dave})
    assert recorded.new() == []


# --- API tokens -------------------------------------------------------------------------------

def test_create_and_revoke_token(acme, alice, carol):
    recorded = Recorded()
    token, plain = tokens.create_token(user=carol, team=acme, name="ci", can_write=True, by=carol)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=carol, action=Action.TOKEN_CREATED, target_type="token", target_id=token.pk,
                 label=str(token))
    assert event.details == {"owner": "carol", "can_write": True}
    assert plain not in str(event.details) and plain.split("_")[-1] not in event.target_label  # never the secret

    recorded = Recorded()
    tokens.revoke_token(token=token, by=alice)  # an admin revokes a member's token
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.TOKEN_REVOKED, target_type="token", target_id=token.pk)
    assert event.details["owner"] == "carol"

    recorded = Recorded()
    revoked_again = tokens.revoke_token(token=token, by=carol)  # harmless, and not recorded again
    assert revoked_again.revoked_at is not None
    assert recorded.new() == []


def test_a_token_made_by_the_command_line_is_recorded_as_mergehub(acme, carol):
    recorded = Recorded()
    tokens.create_token(user=carol, team=acme, name="from the shell", by=None)
    event = the_one(recorded)
    assert (event.actor, event.actor_name, event.details["owner"]) == (None, SYSTEM_ACTOR, "carol")


def test_refused_token_actions_record_nothing(acme, bob, carol):
    token, _ = tokens.create_token(user=carol, team=acme, name="ci", by=carol)
    recorded = Recorded()
    with pytest.raises(PermissionDenied):
        tokens.create_token(user=carol, team=acme, name="for carol", by=bob)
    with pytest.raises(ValidationError):
        tokens.create_token(user=bob, team=acme, name="", by=bob)
    with pytest.raises(PermissionDenied):
        tokens.revoke_token(token=token, by=bob)  # a viewer, not the owner
    assert recorded.new() == []


# --- the registry -----------------------------------------------------------------------------

def test_register_reindex_and_delete_checkpoint(family, acme, alice, carol, run_on_commit):
    recorded = Recorded()
    with run_on_commit():
        base = registry.register_checkpoint(team=acme, user=carol, name="base", role="base",
                                            family_name="tiny-llama", local_path=str(family["base"]))
    event = the_one(recorded)
    assert_event(event, team=acme, actor=carol, action=Action.CHECKPOINT_REGISTERED, target_type="checkpoint",
                 target_id=base.pk, label="base")
    assert event.details == {"role": "base", "source": "local", "family": "tiny-llama"}

    recorded = Recorded()
    with run_on_commit():
        expert = registry.register_checkpoint(team=acme, user=carol, name="expert-1", role="expert",
                                              family_name="tiny-llama", local_path=str(family["experts"][0]))
    assert_event(the_one(recorded), team=acme, actor=carol, action=Action.CHECKPOINT_REGISTERED,
                 target_type="checkpoint", target_id=expert.pk, label="expert-1")

    recorded = Recorded()
    with run_on_commit():
        registry.reindex_checkpoint(checkpoint=expert, user=alice)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.CHECKPOINT_REINDEXED, target_type="checkpoint",
                 target_id=expert.pk)
    job = expert.index_jobs.order_by("-pk").first()
    assert event.details == {"index_job": job.pk}

    recorded = Recorded()
    with run_on_commit():
        registry.retry_index(job=job, user=carol)  # a finished job may be retried
    event = the_one(recorded)
    assert event.action == Action.CHECKPOINT_REINDEXED and event.details["retry_of"] == job.pk

    recorded = Recorded()
    expert_pk = expert.pk
    registry.delete_checkpoint(checkpoint=expert, user=carol)
    assert not Checkpoint.objects.filter(pk=expert_pk).exists()
    assert_event(the_one(recorded), team=acme, actor=carol, action=Action.CHECKPOINT_DELETED,
                 target_type="checkpoint", target_id=expert_pk, label="expert-1")


def test_refused_registry_actions_record_nothing(registered_family, family, acme, bob, carol):
    recorded = Recorded()
    with pytest.raises(PermissionDenied):
        registry.register_checkpoint(team=acme, user=bob, name="x", role="base", local_path=str(family["base"]))
    with pytest.raises(ValidationError):
        registry.register_checkpoint(team=acme, user=carol, name="", role="base", local_path=str(family["base"]))
    with pytest.raises(ValidationError):  # the base still has experts: the delete is refused and rolled back
        registry.delete_checkpoint(checkpoint=registered_family["base"], user=carol)
    with pytest.raises(PermissionDenied):
        registry.delete_checkpoint(checkpoint=registered_family["experts"][0], user=bob)
    with pytest.raises(PermissionDenied):
        registry.reindex_checkpoint(checkpoint=registered_family["experts"][0], user=bob)
    assert recorded.new() == []
    assert Checkpoint.objects.filter(pk=registered_family["base"].pk).exists()


# --- merge runs -------------------------------------------------------------------------------

def _start(fam, user, team):
    return runs.create_run(user=user, team=team, method="task_arithmetic", base=fam["base"],
                           experts=[(e, {"weight": 0.5}) for e in fam["experts"]], budget="0.5", name="audited")


def test_start_cancel_and_retry_run(registered_family, acme, alice, carol):
    recorded = Recorded()
    run = _start(registered_family, carol, acme)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=carol, action=Action.RUN_STARTED, target_type="run", target_id=run.pk,
                 label="audited")  # the page shows "run #id" beside it
    assert event.details == {"method": "task_arithmetic", "budget": "0.5"}

    recorded = Recorded()
    run = runs.cancel_run(run=run, user=alice)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=alice, action=Action.RUN_CANCELLED, target_type="run", target_id=run.pk)
    assert event.details == {"status": "cancelled"}

    recorded = Recorded()
    retried = runs.retry_run(run=run, user=carol)
    event = the_one(recorded)
    assert_event(event, team=acme, actor=carol, action=Action.RUN_RETRIED, target_type="run", target_id=retried.pk)
    assert event.details["retry_of"] == run.pk


def test_refused_run_actions_record_nothing(registered_family, acme, bob, carol, mallory):
    run = _start(registered_family, carol, acme)
    recorded = Recorded()
    with pytest.raises(PermissionDenied):
        _start(registered_family, bob, acme)
    with pytest.raises(ValidationError):
        runs.create_run(user=carol, team=acme, method="task_arithmetic", base=registered_family["base"],
                        experts=[(e, {}) for e in registered_family["experts"]], budget="lots")
    with pytest.raises(PermissionDenied):
        runs.cancel_run(run=run, user=bob)
    with pytest.raises(ValidationError):
        runs.retry_run(run=run, user=carol)  # still queued
    run = runs.cancel_run(run=run, user=carol)
    with pytest.raises(ValidationError):
        runs.cancel_run(run=run, user=carol)  # already cancelled: nothing to cancel
    with pytest.raises(PermissionDenied):
        runs.retry_run(run=run, user=mallory)
    assert [e.action for e in recorded.new()] == [Action.RUN_CANCELLED]


# --- the service itself -----------------------------------------------------------------------

def test_record_refuses_an_unknown_action(acme, alice):
    with pytest.raises(ValueError):
        record(team=acme, actor=alice, action="review.merged")
    assert not AuditEvent.objects.exists()


def test_a_deleted_account_keeps_its_name_in_the_log(acme, alice, dave):
    accounts.add_member(team=acme, user=dave, role=Role.MEMBER, by=alice)
    accounts.remove_member(team=acme, user=dave, by=alice)
    alice.delete()
    events = AuditEvent.objects.filter(team=acme)
    assert [(e.actor, e.actor_name) for e in events] == [(None, "alice"), (None, "alice")]
    assert {e.target_label for e in events} == {"dave"}
