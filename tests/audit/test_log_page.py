"""The audit log page, /teams/<slug>/audit/: team admins only (403 for members and viewers, 404
for another team, the login page for anonymous), newest first, paginated, filterable by action and
actor (the filters kept in the page links), every value escaped; linked from the team page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from mergehub.accounts import services as accounts
from mergehub.accounts.models import Role
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record
from mergehub.ui.pagination import PER_PAGE

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


def _url(team="acme", **query):
    url = reverse("audit:log", args=[team])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def test_admins_read_it_others_do_not(acme, alice_client, bob_client, carol_client, mallory_client):
    assert alice_client.get(_url()).status_code == 200
    assert bob_client.get(_url()).status_code == 403
    assert carol_client.get(_url()).status_code == 403
    other = mallory_client.get(_url())
    assert other.status_code == 404
    assert mallory_client.get(_url("no-such-team")).status_code == 404  # the same answer as for no team
    anonymous = Client().get(_url())
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/?next=")


def test_mallory_reads_her_own_teams_log_only(acme, alice, mallory, mallory_client, rival):
    record(team=acme, actor=alice, action=Action.TEAM_CREATED, target=acme)
    record(team=rival, actor=mallory, action=Action.TEAM_CREATED, target=rival)
    body = mallory_client.get(_url("rival")).content.decode()
    assert "Rival" in body and "alice" not in body and "Acme" not in body


def test_team_page_links_it_for_admins_only(alice_client, carol_client):
    link = _url()
    assert link in alice_client.get(reverse("accounts:team", args=["acme"])).content.decode()
    assert link not in carol_client.get(reverse("accounts:team", args=["acme"])).content.decode()


def test_newest_first_with_who_what_and_target(acme, alice, alice_client, bob, carol):
    accounts.change_role(membership=carol.memberships.get(team=acme), role=Role.VIEWER, by=alice)
    accounts.leave_team(team=acme, user=bob)
    response = alice_client.get(_url())
    events = list(response.context["events"])
    assert [e.action for e in events] == [Action.MEMBER_LEFT, Action.MEMBER_ROLE_CHANGED]
    body = response.content.decode()
    assert "Member left" in body and "Member&#x27;s role changed" in body
    assert "from: member; to: viewer" in body


def test_paginated_newest_first(acme, alice, alice_client):
    for i in range(PER_PAGE + 3):
        record(team=acme, actor=alice, action=Action.RUN_STARTED, label=f"run {i}")
    first = alice_client.get(_url())
    assert [e.target_label for e in first.context["events"]][:2] == [f"run {PER_PAGE + 2}", f"run {PER_PAGE + 1}"]
    assert len(first.context["events"]) == PER_PAGE
    second = alice_client.get(_url(page=2))
    assert [e.target_label for e in second.context["events"]] == ["run 2", "run 1", "run 0"]
    assert alice_client.get(_url(page="nonsense")).status_code == 200


def test_filters_by_action_and_actor_and_keeps_them_in_page_links(acme, alice, carol, alice_client):
    for i in range(PER_PAGE + 1):
        record(team=acme, actor=carol, action=Action.RUN_STARTED, label=f"carol's run {i}")
    record(team=acme, actor=alice, action=Action.RUN_STARTED, label="alice's run")
    record(team=acme, actor=carol, action=Action.TOKEN_CREATED, label="carol's token")

    by_action = alice_client.get(_url(action="token.created"))
    assert [e.target_label for e in by_action.context["events"]] == ["carol's token"]
    by_actor = alice_client.get(_url(actor="alice"))
    assert [e.target_label for e in by_actor.context["events"]] == ["alice's run"]

    both = alice_client.get(_url(action="run.started", actor="carol"))
    assert both.context["page_obj"].paginator.count == PER_PAGE + 1
    assert "?action=run.started&amp;actor=carol&amp;page=2" in both.content.decode()
    page2 = alice_client.get(_url(action="run.started", actor="carol", page=2))
    assert [e.target_label for e in page2.context["events"]] == ["carol's run 0"]


def test_an_unknown_action_filter_shows_everything(acme, alice, alice_client):
    record(team=acme, actor=alice, action=Action.TEAM_CREATED, target=acme)
    response = alice_client.get(_url(action="<script>"))
    assert response.status_code == 200 and len(response.context["events"]) == 1
    assert "<script>" not in response.content.decode()


def test_every_value_is_escaped(acme, alice, alice_client, django_user_model):
    evil = django_user_model.objects.create_user(username="<b>evil</b>", password="x")
    accounts.add_member(team=acme, user=evil, role=Role.MEMBER, by=alice)
    record(team=acme, actor=evil, action=Action.RUN_STARTED, label="<script>alert(1)</script>",
           details={"<i>k</i>": "<img src=x>"})
    body = alice_client.get(_url()).content.decode()
    for raw in ("<b>evil</b>", "<script>alert(1)</script>", "<i>k</i>", "<img src=x>"):
        assert raw not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;b&gt;evil&lt;/b&gt;" in body


def test_the_django_admin_shows_events_read_only(acme, alice, admin_client):
    event = record(team=acme, actor=alice, action=Action.TEAM_CREATED, target=acme)
    other = record(team=acme, actor=alice, action=Action.RUN_STARTED, label="nightly-merge")
    listing = admin_client.get(reverse("admin:audit_auditevent_changelist"))
    assert listing.status_code == 200
    html = listing.content.decode()
    rows = html[html.index('<table id="result_list">'):]
    assert "Team created" in rows and "Run started" in rows and "nightly-merge" in rows and "alice" in rows
    assert 'name="_selected_action"' not in rows  # no delete: nothing to act on
    searched = admin_client.get(reverse("admin:audit_auditevent_changelist"), {"q": "nightly"})
    assert [e.pk for e in searched.context["cl"].result_list] == [other.pk]

    page = admin_client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Team created" in html and "alice" in html and 'class="readonly"' in html
    for field in AuditEvent._meta.fields:  # every value shown, none of them a form field
        assert f'name="{field.name}"' not in html
    assert 'name="_save"' not in html and "/delete/" not in html
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert admin_client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
