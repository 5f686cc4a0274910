"""Team self-service in a real browser: alice creates a team from the Teams page, invites an
existing user (mallory, by her email address) as a member, and mallory, logging in, finds the
team in her switcher and her teams list and sees its members, without the admin controls.

Drives Debian's chromium as tests/browser/test_merge_flow.py does (whose fixture fails the test
on any request outside the server and any CSP violation).
"""

from __future__ import annotations

import re

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def _log_in(page, url: str, username: str) -> None:
    from tests.conftest import PASSWORD

    page.goto(url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")


def test_create_a_team_and_invite(browser_page, live_server, alice, mallory):  # noqa: F811
    from mergehub.accounts.models import Membership

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")

    # alice creates a team from the Teams page and lands on it, as its admin
    _log_in(page, url, "alice")
    page.click("#teams-link")
    page.wait_for_selector("h1:has-text('Your teams')")
    _shot(page, "teams")
    page.fill("input[name=name]", "Blue Team")
    page.click("button:has-text('Create team')")
    page.wait_for_url(re.compile(r"/teams/blue-team/$"))
    assert "Created Blue Team" in page.text_content(".messages")
    assert page.locator("#members tr[data-member=alice]").get_by_role("combobox").input_value() == "admin"

    # she invites mallory, who has an account but is in another team, by her email address
    page.fill("#invite-form input[name=username]", "mallory@example.com")
    page.select_option("#invite-form select[name=role]", "member")
    page.click("#invite-form button:has-text('Invite')")
    page.wait_for_selector(".messages li.success:has-text('mallory is now a member of Blue Team')")
    assert page.locator("#members tr[data-member=mallory] select").input_value() == "member"
    _shot(page, "team")
    page.click("button:has-text('Log out')")
    page.wait_for_url(re.compile(r"/login/"))

    # mallory now has two teams: the switcher offers Blue Team, and her teams page lists it
    _log_in(page, url, "mallory")
    assert sorted(page.locator("#team-switch option").all_inner_texts()) == ["Blue Team", "Rival"]
    page.click("#teams-link")
    row = page.locator("#teams tr", has_text="Blue Team")
    assert row.locator(".badge").inner_text() == "Member"
    row.get_by_role("link", name="Blue Team").click()
    page.wait_for_url(re.compile(r"/teams/blue-team/$"))
    members = page.locator("#members")
    assert members.locator("tr[data-member=alice] .badge").inner_text() == "Admin"
    assert members.locator("tr[data-member=mallory] .badge").inner_text() == "Member"
    assert page.locator("text=Invite a member").count() == 0 and page.locator("text=Change role").count() == 0
    _shot(page, "team-as-member")

    # and she can work in it
    page.select_option("#team-switch", "blue-team")
    page.wait_for_selector(".messages li.success:has-text('Now working in Blue Team')")
    assert Membership.objects.get(team__slug="blue-team", user=mallory).role == "member"
