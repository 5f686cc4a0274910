"""Reviewing a run in a real browser (issue 25): carol, the run's author, requests a review with a
Markdown comment; she is offered no "Approve" (the team does not allow self-approval); dave, a
member, finds the run under "Review requested" on the run list, approves it with a comment; the
report shows the approved state and the conversation in order, HTML in a comment stays text, and
the team's audit log holds both steps.

Drives Debian's chromium as tests/browser/test_merge_flow.py does. The run is a row written as a
worker would write it (the flow is about review, not the merge).
"""

from __future__ import annotations

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def _log_in(page, url, username):
    from tests.conftest import PASSWORD

    page.context.clear_cookies()
    page.goto(url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")


def test_request_review_then_approve(browser_page, live_server, acme, alice, carol):  # noqa: F811
    from django.contrib.auth import get_user_model

    from mergehub.accounts.models import Membership, Role
    from mergehub.audit.models import AuditEvent
    from mergehub.reviews.selectors import state_of
    from tests.conftest import PASSWORD
    from tests.reviews.conftest import make_run

    dave = get_user_model().objects.create_user(username="dave", password=PASSWORD)
    Membership.objects.create(user=dave, team=acme, role=Role.MEMBER)
    run = make_run(acme, carol, name="budget half ties")
    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")

    # 1. the author requests review, with Markdown (and an attempt at HTML)
    _log_in(page, url, "carol")
    page.goto(url + f"/runs/{run.pk}/")
    page.wait_for_selector("#review h2:has-text('Review')")
    assert page.locator("#review-form button[value=approve]").count() == 0
    page.fill("#review-body", "Ready for a look: **0.5** budget. <b>not bold</b>")
    page.click("#review-form button[value=request]")
    page.wait_for_selector("#review-state .badge.review-requested")
    assert page.locator("#review-history strong:has-text('0.5')").count() == 1
    assert "<b>not bold</b>" in page.locator("#review-history").inner_text()  # shown as text
    # she may not approve her own run; the page says why
    assert page.locator("#review-form button[value=approve]").count() == 0
    assert "does not allow authors" in page.locator("#why-not-approve").inner_text()
    _shot(page, "review-requested")

    # 2. a member finds it on the run list and approves it
    _log_in(page, url, "dave")
    page.goto(url + "/runs/")
    page.select_option("#f-review", "requested")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**/runs/?**review=requested**")
    page.click(f"a:has-text('#{run.pk} budget half ties')")
    page.fill("#review-body", "Scores hold up; approving.")
    page.click("#review-form button[value=approve]")
    page.wait_for_selector("#review-state .badge.review-approved")
    entries = page.locator("#review-history .entry-head").all_inner_texts()
    assert [e.split(" · ")[0] for e in entries] == ["carol requested review", "dave approved"]
    assert page.locator(".page-head .badge.review-approved").count() >= 1
    _shot(page, "review-approved")

    assert state_of(run) == "approved"
    assert list(AuditEvent.objects.filter(target_id=str(run.pk)).order_by("pk").values_list("actor_name", "action")) == [
        ("carol", "review.requested"), ("dave", "review.approved")]
    assert page.csp_violations == []
