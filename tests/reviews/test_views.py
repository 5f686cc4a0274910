"""The review section of a run's report, its form's buttons, the run list's review filter and the
team page's review policy, through the pages."""

import pytest
from django.urls import reverse

from mergehub.audit.models import AuditEvent
from mergehub.reviews import services
from mergehub.reviews.models import Entry
from mergehub.reviews.selectors import state_of
from tests.conftest import _client_for

from .conftest import make_run


def _post(client, run, action, body=""):
    return client.post(reverse("reviews:review", args=[run.pk]), {"action": action, "body": body})


def _buttons(html: str) -> set[str]:
    return {value for value in ("comment", "request", "approve", "request_changes", "withdraw")
            if f'name="action" value="{value}"' in html}


def test_request_review_then_approve_through_the_pages(carols_run, carol, dave):
    carol_client, dave_client = _client_for(carol), _client_for(dave)
    page = carol_client.get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    assert 'id="review"' in page and _buttons(page) == {"comment", "request"}

    response = _post(carol_client, carols_run, "request", "Ready: **budget 0.5**.")
    assert response.status_code == 302 and response["Location"].endswith(f"/runs/{carols_run.pk}/#review")
    page = dave_client.get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    assert _buttons(page) == {"comment", "approve", "request_changes"}
    assert "Ready: <strong>budget 0.5</strong>." in page and "Review requested" in page

    _post(dave_client, carols_run, "approve", "Scores hold up.")
    assert state_of(carols_run) == "approved"
    page = carol_client.get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    history = page[page.index('id="review-history"'):]
    assert history.index("requested review") < history.index("approved") < history.index("Scores hold up.")
    assert 'class="badge review-approved"' in page


def test_author_sees_why_approve_is_missing(carols_run, carol):
    services.request_review(run=carols_run, user=carol)
    page = _client_for(carol).get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    assert _buttons(page) == {"comment", "request_changes", "withdraw"}
    assert "does not allow authors to approve their own runs" in page
    assert _post(_client_for(carol), carols_run, "approve").status_code == 403  # a forged post
    assert state_of(carols_run) == "requested"


def test_viewer_comments_and_cannot_approve(carols_run, carol, bob):
    services.request_review(run=carols_run, user=carol)
    bob_client = _client_for(bob)
    page = bob_client.get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    assert _buttons(page) == {"comment"}
    _post(bob_client, carols_run, "comment", "<script>alert('x')</script> [x](javascript:alert(1))")
    assert _post(bob_client, carols_run, "approve").status_code == 403
    page = bob_client.get(reverse("runs:detail", args=[carols_run.pk])).content.decode()
    assert "<script>alert('x')</script>" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page


def test_a_refused_comment_comes_back_in_the_box(carols_run, carol, dave):
    services.request_review(run=carols_run, user=carol)
    client = _client_for(dave)
    response = _post(client, carols_run, "request_changes", "   ")
    page = client.get(response["Location"]).content.decode()
    assert "Say which changes you are asking for" in page
    response = _post(client, carols_run, "comment", "x" * 10_001)
    page = client.get(response["Location"]).content.decode()
    assert "at most 10,000 characters" in page and ">" + "x" * 10_001 + "</textarea>" in page


def test_unknown_action_is_an_error_message(carols_run, carol):
    client = _client_for(carol)
    page = client.get(_post(client, carols_run, "merge").url).content.decode()
    assert "Choose what to do" in page and not Entry.objects.exists()


def test_delete_comment_button_for_its_author_and_admins(carols_run, carol, dave, alice):
    entry = services.add_comment(run=carols_run, user=carol, body="mine")
    delete_url = reverse("reviews:delete_comment", args=[carols_run.pk, entry.pk])
    detail = reverse("runs:detail", args=[carols_run.pk])
    assert delete_url in _client_for(carol).get(detail).content.decode()
    assert delete_url in _client_for(alice).get(detail).content.decode()
    assert delete_url not in _client_for(dave).get(detail).content.decode()
    assert _client_for(dave).post(delete_url).status_code == 403
    assert _client_for(carol).post(delete_url).status_code == 302
    assert not Entry.objects.exists()


def test_run_list_filters_and_badges_by_review_state(acme, carol, dave):
    waiting, approved, untouched = (make_run(acme, carol, name=n) for n in ("waiting", "approved one", "untouched"))
    services.request_review(run=waiting, user=carol)
    services.request_review(run=approved, user=carol)
    services.decide(run=approved, user=dave, decision="approve")
    client = _client_for(dave)

    def names(query):
        page = client.get(reverse("runs:list"), query).content.decode()
        return {run.name for run in (waiting, approved, untouched) if f"#{run.pk} {run.name}" in page}, page

    assert names({"review": "requested"})[0] == {"waiting"}
    assert names({"review": "approved"})[0] == {"approved one"}
    assert names({"review": "none"})[0] == {"untouched"}
    shown, page = names({})
    assert shown == {"waiting", "approved one", "untouched"}
    assert page.count('class="badge review-requested"') == 1 and page.count('class="badge review-approved"') == 1
    assert names({"review": "bogus"})[0] == shown  # an unknown state filters nothing


@pytest.mark.parametrize("allow", [True, False])
def test_team_admin_sets_the_review_policy(acme, alice, carol, allow):
    acme.allow_self_approval = not allow
    acme.save()
    response = _client_for(alice).post(reverse("accounts:review_policy", args=[acme.slug]),
                                       {"allow_self_approval": "on"} if allow else {})
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.allow_self_approval is allow
    event = AuditEvent.objects.get(action="team.settings_changed")
    assert event.actor_name == "alice" and event.details == {"allow_self_approval": allow}
    assert _client_for(carol).post(reverse("accounts:review_policy", args=[acme.slug]),
                                   {"allow_self_approval": "on"} if not allow else {}).status_code == 403
    acme.refresh_from_db()
    assert acme.allow_self_approval is allow


def test_self_approval_when_the_team_allows_it(acme, alice, carol):
    _client_for(alice).post(reverse("accounts:review_policy", args=[acme.slug]), {"allow_self_approval": "on"})
    run = make_run(acme, carol)
    client = _client_for(carol)
    _post(client, run, "request")
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert "approve" in _buttons(page)
    _post(client, run, "approve")
    assert state_of(run) == "approved"


def test_dashboard_counts_runs_awaiting_the_users_review(acme, carol, dave, mallory):
    for name in ("one", "two"):
        services.request_review(run=make_run(acme, carol, name=name), user=carol)
    services.request_review(run=make_run(acme, dave, name="dave's own"), user=dave)
    page = _client_for(dave).get(reverse("dashboard:dashboard")).content.decode()
    assert "2 runs of your team await review" in page and "?review=requested" in page
    page = _client_for(carol).get(reverse("dashboard:dashboard")).content.decode()
    assert "1 run of your team awaits review" in page
    assert "await" not in _client_for(mallory).get(reverse("dashboard:dashboard")).content.decode()
