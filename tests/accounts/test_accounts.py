import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from mergehub.accounts.models import Membership, Role, role_at_least
from mergehub.accounts.selectors import get_team_for, has_role, members_of, membership_for, teams_for
from mergehub.accounts.services import add_member, create_team, remove_member


def test_role_order():
    assert role_at_least("admin", "member") and role_at_least("member", "member")
    assert not role_at_least("viewer", "member") and not role_at_least("member", "admin")


def test_create_team_makes_owner_admin(alice):
    team = create_team(name="Blue Team", owner=alice)
    assert team.slug == "blue-team"
    assert membership_for(user=alice, team=team).role == Role.ADMIN


@pytest.mark.parametrize("name", ["", "   ", "!!!"])
def test_create_team_rejects_blank_names(alice, name):
    with pytest.raises(ValidationError) as exc:
        create_team(name=name, owner=alice)
    assert "name" in exc.value.message_dict


def test_create_team_rejects_duplicates(alice, acme):
    with pytest.raises(ValidationError, match="already exists"):
        create_team(name="ACME", owner=alice)


def test_teams_are_scoped_to_memberships(alice, bob, mallory, acme, rival):
    assert list(teams_for(alice)) == [acme]
    assert list(teams_for(mallory)) == [rival]
    assert get_team_for(user=bob, slug="acme") == acme
    with pytest.raises(Http404):
        get_team_for(user=mallory, slug="acme")
    with pytest.raises(Http404):
        members_of(user=mallory, team=acme)


def test_anonymous_user_has_no_team(acme):
    from django.contrib.auth.models import AnonymousUser

    assert not teams_for(AnonymousUser()).exists()
    assert not has_role(user=AnonymousUser(), team=acme, role=Role.VIEWER)


def test_has_role(alice, bob, mallory, acme):
    assert has_role(user=alice, team=acme, role=Role.ADMIN)
    assert has_role(user=bob, team=acme, role=Role.VIEWER)
    assert not has_role(user=bob, team=acme, role=Role.MEMBER)
    assert not has_role(user=mallory, team=acme, role=Role.VIEWER)


def test_admin_adds_and_changes_members(alice, mallory, acme):
    m = add_member(team=acme, user=mallory, role=Role.MEMBER, by=alice)
    assert m.role == Role.MEMBER
    add_member(team=acme, user=mallory, role=Role.VIEWER, by=alice)
    assert Membership.objects.get(team=acme, user=mallory).role == Role.VIEWER
    remove_member(team=acme, user=mallory, by=alice)
    assert membership_for(user=mallory, team=acme) is None


def test_only_admins_manage_members(alice, bob, carol, mallory, acme):
    for actor in (bob, carol, mallory):
        with pytest.raises(PermissionDenied):
            add_member(team=acme, user=mallory, role=Role.ADMIN, by=actor)
    assert membership_for(user=mallory, team=acme) is None


def test_unknown_role_is_a_form_error(alice, mallory, acme):
    with pytest.raises(ValidationError) as exc:
        add_member(team=acme, user=mallory, role="owner", by=alice)
    assert "role" in exc.value.message_dict


def test_last_admin_cannot_be_demoted_or_removed(alice, acme):
    with pytest.raises(ValidationError, match="at least one admin"):
        add_member(team=acme, user=alice, role=Role.VIEWER, by=alice)
    with pytest.raises(ValidationError, match="at least one admin"):
        remove_member(team=acme, user=alice, by=alice)
