"""Team self-service (issue 25, item 5): create a team, invite existing users by username or
email, change roles, remove members, leave; a team always keeps an admin.

Services first (the rules), then the pages (thin views over them: POST + CSRF, 403 for
non-admins, 404 for non-members, messages, escaping). Personas: tests/conftest.py.
"""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse

from mergehub.accounts.models import Membership, Role, Team
from mergehub.accounts.selectors import membership_for, teams_for
from mergehub.accounts.services import (change_role, create_team, invite_member, leave_team,
                                        remove_member)
from tests.conftest import PASSWORD


def _role(user, team):
    membership = membership_for(user=user, team=team)
    return membership.role if membership else None


@pytest.fixture
def dave(django_user_model):
    """An account in no team."""
    return django_user_model.objects.create_user(username="dave", email="Dave.Jones@example.com",
                                                 password=PASSWORD)


# --- create -------------------------------------------------------------------------------------

def test_any_user_creates_a_team_and_is_its_admin(dave):
    team = create_team(name="  Blue Team ", owner=dave)
    assert (team.name, team.slug) == ("Blue Team", "blue-team")
    assert _role(dave, team) == Role.ADMIN and list(teams_for(dave)) == [team]


@pytest.mark.parametrize(("name", "says"), [
    ("acme", "A team named 'acme' already exists"),  # the same name in other letter case
    ("A.C.M.E", "address /teams/acme/ already exists"),  # another name, the same address
    ("Switch", "which the site uses itself"),  # /teams/switch/ is the team switcher
    ("x" * 101, "at most 100 characters"),
    ("日本", "at least one letter from A to Z or a digit"),
])
def test_create_team_refuses_names_it_cannot_use(dave, acme, name, says):
    with pytest.raises(ValidationError, match=says) as exc:
        create_team(name=name, owner=dave)
    assert "name" in exc.value.message_dict
    assert Team.objects.count() == 1 and not teams_for(dave).exists()


# --- invite -------------------------------------------------------------------------------------

def test_admin_invites_by_username(alice, acme, dave):
    membership = invite_member(team=acme, username="dave", role=Role.MEMBER, by=alice)
    assert (membership.user, membership.role) == (dave, Role.MEMBER)
    assert acme in teams_for(dave)


def test_admin_invites_by_email_in_any_letter_case(alice, acme, dave):
    invite_member(team=acme, username=" dave.jones@EXAMPLE.com ", role=Role.VIEWER, by=alice)
    assert _role(dave, acme) == Role.VIEWER


def test_invite_an_unknown_or_inactive_user_says_so(alice, acme, dave):
    for who in ("nobody", "nobody@example.com", ""):
        with pytest.raises(ValidationError) as exc:
            invite_member(team=acme, username=who, role=Role.VIEWER, by=alice)
        assert "username" in exc.value.message_dict
    dave.is_active = False
    dave.save()
    with pytest.raises(ValidationError, match="No user named 'dave'"):
        invite_member(team=acme, username="dave", role=Role.VIEWER, by=alice)
    assert _role(dave, acme) is None


def test_invite_a_member_again_says_they_already_are(alice, bob, acme):
    with pytest.raises(ValidationError, match="bob is already a member of Acme"):
        invite_member(team=acme, username="bob@example.com", role=Role.ADMIN, by=alice)
    assert _role(bob, acme) == Role.VIEWER  # the invitation did not change the role


def test_an_email_shared_by_two_accounts_needs_the_username(alice, acme, django_user_model):
    for name in ("erin", "erin2"):
        django_user_model.objects.create_user(username=name, email="erin@example.com")
    with pytest.raises(ValidationError, match="invite by username instead"):
        invite_member(team=acme, username="erin@example.com", role=Role.VIEWER, by=alice)
    invite_member(team=acme, username="erin2", role=Role.VIEWER, by=alice)
    assert list(acme.memberships.filter(user__username__startswith="erin").values_list("user__username", flat=True)) \
        == ["erin2"]


@pytest.mark.parametrize("actor", ["bob", "carol", "mallory"])
def test_only_admins_invite(request, acme, dave, actor):
    with pytest.raises(PermissionDenied):
        invite_member(team=acme, username="dave", role=Role.VIEWER, by=request.getfixturevalue(actor))
    assert _role(dave, acme) is None


def test_invite_with_an_unknown_role_is_refused(alice, acme, dave):
    with pytest.raises(ValidationError) as exc:
        invite_member(team=acme, username="dave", role="owner", by=alice)
    assert "role" in exc.value.message_dict and _role(dave, acme) is None


# --- roles, removal, leaving: the last admin stays ---------------------------------------------

def test_admin_changes_roles(alice, bob, acme):
    change_role(membership=membership_for(user=bob, team=acme), role=Role.ADMIN, by=alice)
    assert _role(bob, acme) == Role.ADMIN
    # with two admins, alice may step down herself
    change_role(membership=membership_for(user=alice, team=acme), role=Role.MEMBER, by=alice)
    assert _role(alice, acme) == Role.MEMBER


def test_the_last_admin_keeps_the_role(alice, bob, acme):
    with pytest.raises(ValidationError, match="alice is the last admin of Acme") as exc:
        change_role(membership=membership_for(user=alice, team=acme), role=Role.VIEWER, by=alice)
    assert "make another member an admin first" in str(exc.value)
    assert _role(alice, acme) == Role.ADMIN


def test_only_admins_change_roles(carol, bob, acme, mallory):
    for actor in (bob, carol, mallory):
        with pytest.raises(PermissionDenied):
            change_role(membership=membership_for(user=bob, team=acme), role=Role.ADMIN, by=actor)
    assert _role(bob, acme) == Role.VIEWER


def test_admin_removes_a_member_but_never_the_last_admin(alice, bob, carol, acme):
    remove_member(team=acme, user=bob, by=alice)
    assert _role(bob, acme) is None
    with pytest.raises(ValidationError, match="alice is the last admin of Acme"):
        remove_member(team=acme, user=alice, by=alice)
    change_role(membership=membership_for(user=carol, team=acme), role=Role.ADMIN, by=alice)
    remove_member(team=acme, user=alice, by=carol)  # now there is another admin
    assert _role(alice, acme) is None and _role(carol, acme) == Role.ADMIN


def test_only_admins_remove(alice, bob, carol, acme):
    with pytest.raises(PermissionDenied):
        remove_member(team=acme, user=bob, by=carol)
    with pytest.raises(PermissionDenied):
        remove_member(team=acme, user=carol, by=bob)
    assert _role(bob, acme) == Role.VIEWER and _role(carol, acme) == Role.MEMBER


def test_members_leave_but_the_last_admin_cannot(alice, bob, carol, acme):
    leave_team(team=acme, user=bob)
    leave_team(team=acme, user=carol)
    assert _role(bob, acme) is None and _role(carol, acme) is None
    with pytest.raises(ValidationError, match="You are the only member of Acme"):
        leave_team(team=acme, user=alice)
    invite_member(team=acme, username="bob", role=Role.MEMBER, by=alice)
    with pytest.raises(ValidationError, match="You are the last admin of Acme.*make another member an admin first"):
        leave_team(team=acme, user=alice)
    assert _role(alice, acme) == Role.ADMIN
    change_role(membership=membership_for(user=bob, team=acme), role=Role.ADMIN, by=alice)
    leave_team(team=acme, user=alice)
    assert _role(alice, acme) is None


def test_leaving_a_team_you_are_not_in_says_so(mallory, acme):
    with pytest.raises(ValidationError, match="You are not a member of Acme"):
        leave_team(team=acme, user=mallory)


# --- the pages ----------------------------------------------------------------------------------

def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_teams_page_lists_your_teams_and_creates_one(alice_client, alice, acme, rival):
    page = alice_client.get(reverse("accounts:teams")).content.decode()
    assert "Acme" in page and "Rival" not in page and "Create a team" in page
    response = alice_client.post(reverse("accounts:teams"), {"name": "Blue Team"})
    assert response.status_code == 302 and response["Location"] == "/teams/blue-team/"
    team = Team.objects.get(slug="blue-team")
    assert _role(alice, team) == Role.ADMIN
    assert "Created Blue Team, and you are its admin" in _messages(alice_client.get(response["Location"]))[0]
    assert alice_client.get(reverse("dashboard:dashboard")).context["team"] == team  # now working in it
    # a second time: the form says why, and nothing is created
    again = alice_client.post(reverse("accounts:teams"), {"name": "blue team"})
    assert again.status_code == 200 and "already exists; choose another name" in again.content.decode()
    assert Team.objects.filter(slug="blue-team").count() == 1


def test_a_user_in_no_team_is_offered_to_create_one(dave):
    client = Client()
    client.force_login(dave)
    assert 'href="/teams/"' in client.get(reverse("dashboard:dashboard")).content.decode()
    assert "not in a team yet" in client.get(reverse("accounts:teams")).content.decode()


def test_team_names_are_escaped(alice_client):
    alice_client.post(reverse("accounts:teams"), {"name": "<script>x</script> Team"})
    team = Team.objects.get(slug="scriptxscript-team")
    for url in (reverse("accounts:team", args=[team.slug]), reverse("accounts:teams")):
        body = alice_client.get(url).content.decode()
        assert "<script>x</script>" not in body and "&lt;script&gt;x&lt;/script&gt; Team" in body


def test_admin_page_invites_by_email_and_shows_controls(alice_client, acme, dave):
    response = alice_client.post(reverse("accounts:team", args=["acme"]),
                                 {"username": "dave.jones@example.com", "role": "member"})
    assert response.status_code == 302 and _role(dave, acme) == Role.MEMBER
    page = alice_client.get(response["Location"])
    assert "dave is now a member of Acme." in _messages(page)
    body = page.content.decode()
    assert "Invite a member" in body and "Change role" in body and "Remove" in body
    membership = membership_for(user=dave, team=acme)
    assert reverse("accounts:member_remove", args=["acme", membership.pk]) in body
    missing = alice_client.post(reverse("accounts:team", args=["acme"]), {"username": "nobody", "role": "viewer"})
    assert missing.status_code == 200 and "No user named &#x27;nobody&#x27;" in missing.content.decode()
    again = alice_client.post(reverse("accounts:team", args=["acme"]), {"username": "dave", "role": "viewer"})
    assert "dave is already a member of Acme" in again.content.decode() and _role(dave, acme) == Role.MEMBER


def test_non_admins_see_roles_but_no_controls(bob_client, alice, carol, acme):
    body = bob_client.get(reverse("accounts:team", args=["acme"])).content.decode()
    assert "alice" in body and "carol" in body and "Admin" in body and "Member" in body
    assert "Invite a member" not in body and "Change role" not in body and "/remove/" not in body
    assert "Leave Acme" in body  # leaving is for everyone


def test_viewer_cannot_invite_change_or_remove(bob_client, bob, alice, carol, acme, dave):
    alices = membership_for(user=alice, team=acme)
    carols = membership_for(user=carol, team=acme)
    assert bob_client.post(reverse("accounts:team", args=["acme"]),
                           {"username": "dave", "role": "viewer"}).status_code == 403
    assert bob_client.post(reverse("accounts:team", args=["acme"]), {}).status_code == 403  # before the form
    assert bob_client.post(reverse("accounts:member_role", args=["acme", carols.pk]),
                           {"role": "viewer"}).status_code == 403
    assert bob_client.post(reverse("accounts:member_remove", args=["acme", alices.pk])).status_code == 403
    assert (_role(dave, acme), _role(carol, acme), _role(alice, acme)) == (None, Role.MEMBER, Role.ADMIN)


def test_non_members_get_404_for_every_team_page(mallory_client, alice, bob, acme):
    bobs = membership_for(user=bob, team=acme)
    for name, args, method in (("accounts:team", ["acme"], "get"), ("accounts:team", ["acme"], "post"),
                               ("accounts:leave", ["acme"], "post"),
                               ("accounts:member_role", ["acme", bobs.pk], "post"),
                               ("accounts:member_remove", ["acme", bobs.pk], "post")):
        response = getattr(mallory_client, method)(reverse(name, args=args), {"role": "admin", "username": "mallory"})
        assert response.status_code == 404, (name, method)
    # her own team's slug with acme's membership: ids that do not belong together
    assert mallory_client.post(reverse("accounts:member_remove", args=["rival", bobs.pk])).status_code == 404
    assert _role(bob, acme) == Role.VIEWER and not acme.memberships.filter(user__username="mallory").exists()


def test_admin_changes_a_role_and_the_last_admin_is_refused_with_a_message(alice_client, alice, bob, acme):
    bobs, alices = membership_for(user=bob, team=acme), membership_for(user=alice, team=acme)
    response = alice_client.post(reverse("accounts:member_role", args=["acme", alices.pk]), {"role": "viewer"})
    assert response.status_code == 302 and response["Location"] == "/teams/acme/"
    page = alice_client.get(response["Location"])
    assert any("alice is the last admin of Acme" in m for m in _messages(page)) and _role(alice, acme) == Role.ADMIN
    alice_client.post(reverse("accounts:member_role", args=["acme", bobs.pk]), {"role": "admin"})
    assert _role(bob, acme) == Role.ADMIN
    bad = alice_client.post(reverse("accounts:member_role", args=["acme", bobs.pk]), {"role": "owner"})
    assert any("Choose one of the roles" in m for m in _messages(alice_client.get(bad["Location"])))
    assert _role(bob, acme) == Role.ADMIN


def test_admin_removes_a_member_and_not_the_last_admin(alice_client, alice, carol, acme):
    carols, alices = membership_for(user=carol, team=acme), membership_for(user=alice, team=acme)
    response = alice_client.post(reverse("accounts:member_remove", args=["acme", carols.pk]))
    assert response["Location"] == "/teams/acme/" and _role(carol, acme) is None
    assert "Removed carol from Acme." in _messages(alice_client.get(response["Location"]))
    refused = alice_client.post(reverse("accounts:member_remove", args=["acme", alices.pk]))
    assert refused["Location"] == "/teams/acme/" and _role(alice, acme) == Role.ADMIN
    assert any("at least one admin" in m for m in _messages(alice_client.get(refused["Location"])))


def test_member_leaves_and_loses_the_team(carol_client, carol, acme):
    response = carol_client.post(reverse("accounts:leave", args=["acme"]))
    assert response["Location"] == "/teams/" and _role(carol, acme) is None
    assert carol_client.get(reverse("accounts:team", args=["acme"])).status_code == 404
    assert "not in a team yet" in carol_client.get(reverse("accounts:teams")).content.decode()


def test_the_last_admin_cannot_leave_and_is_told_why(alice_client, alice, bob, acme):
    response = alice_client.post(reverse("accounts:leave", args=["acme"]))
    assert response["Location"] == "/teams/acme/" and _role(alice, acme) == Role.ADMIN
    assert any("You are the last admin of Acme" in m for m in _messages(alice_client.get(response["Location"])))


def test_team_actions_are_post_only_and_need_csrf(alice, bob, acme):
    bobs = membership_for(user=bob, team=acme)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    for name, args in (("accounts:leave", ["acme"]), ("accounts:member_role", ["acme", bobs.pk]),
                       ("accounts:member_remove", ["acme", bobs.pk])):
        assert client.get(reverse(name, args=args)).status_code == 405
        assert client.post(reverse(name, args=args), {"role": "admin"}).status_code == 403
    assert client.post(reverse("accounts:teams"), {"name": "Sneaky"}).status_code == 403
    invite = client.post(reverse("accounts:team", args=["acme"]), {"username": "mallory", "role": "admin"})
    assert invite.status_code == 403
    assert _role(bob, acme) == Role.VIEWER and not Team.objects.filter(name="Sneaky").exists()


def test_switching_and_the_switcher_link_the_teams_page(alice_client, alice, acme, rival):
    Membership.objects.create(user=alice, team=rival, role=Role.VIEWER)
    page = alice_client.get(reverse("accounts:teams")).content.decode()
    assert 'id="team-switch"' in page and 'id="teams-link"' in page and "Work in it" in page
    response = alice_client.post(reverse("accounts:switch_team"), {"team": "rival", "next": "/teams/"})
    assert response["Location"] == "/teams/"
    assert alice_client.get(reverse("accounts:teams")).context["current"] == rival
