"""The API in a real browser: create a token on the team's tokens page, open the API docs (Swagger
UI, served from /static/ under the site's CSP), authorize with the token and run
GET /api/v1/checkpoints/ from the page.

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


def test_token_page_and_api_docs(browser_page, live_server, alice, registered_family):  # noqa: F811
    from tests.conftest import PASSWORD

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")
    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # the team page links to its tokens; create a read-only one, shown once
    page.goto(url + "/teams/acme/")
    page.click("a:has-text('API tokens')")
    page.fill("input[name=name]", "browser")
    page.click("button:has-text('Create token')")
    text = page.text_content("#new-token-text").strip()
    assert re.fullmatch(r"mh_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", text)
    assert page.locator("#token-table").get_by_text("read-only").count() == 1
    _shot(page, "api-tokens")

    # the docs: Swagger UI draws the schema's operations
    page.goto(url + "/api/v1/docs/")
    page.wait_for_selector(".opblock-tag:has-text('checkpoints')")
    assert page.locator(".opblock").count() >= 4

    # authorize with the token and list the checkpoints from the page
    page.click("button.authorize")
    page.fill(".auth-container input", text)
    page.click(".auth-btn-wrapper button.authorize")
    page.click(".auth-btn-wrapper button.btn-done")
    page.click(".opblock-summary-path[data-path='/api/v1/checkpoints/'] >> xpath=ancestor::*[contains(@class, "
               "'opblock-get')][1]//button[contains(@class, 'opblock-summary-control')]")
    page.click("button.try-out__btn")
    page.click("button.execute")
    page.wait_for_selector(".live-responses-table tr.response .response-col_status")
    assert page.text_content(".live-responses-table tr.response .response-col_status").strip().startswith("200")
    assert "expert-1" in page.text_content(".live-responses-table tr.response .response-col_description")
    _shot(page, "api-docs")
