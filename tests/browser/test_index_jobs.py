"""Index jobs in a real browser: an expert whose index failed shows the failed job with its
error and log; "Retry indexing" runs it again (sync jobs) and the page shows it succeeded."""

from __future__ import annotations

import re

import pytest

from tests.browser.test_merge_flow import CHROMIUM, browser_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}")]


def test_retry_a_failed_index_from_the_checkpoint_page(browser_page, live_server, alice,  # noqa: F811
                                                       registered_family, monkeypatch):
    from mergehub.registry import services
    from mergehub.registry.models import IndexJob
    from tests.conftest import PASSWORD

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")
    expert = registered_family["experts"][0]
    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    def broken(checkpoint, **kwargs):
        raise services.ValidationError("the expert's disk went away")

    with monkeypatch.context() as m:
        m.setattr(services, "index_expert", broken)
        page.goto(url + f"/checkpoints/{expert.pk}/")
        page.click("button:has-text('Re-index')")
        page.wait_for_selector("#index-job-status.failed")
    assert "the expert's disk went away" in page.locator("body").inner_text()
    assert page.locator("#index-status.failed").count() == 1

    page.click("button:has-text('Retry indexing')")
    page.wait_for_url(re.compile(rf"/checkpoints/{expert.pk}/$"))
    page.wait_for_selector("#index-job-status.succeeded")
    page.wait_for_selector("#index-status.ready")
    assert "succeeded: expert-1 is ready" in page.locator("#index-job-live").inner_text()
    latest, failed = IndexJob.objects.filter(checkpoint=expert)[:2]  # newest first
    assert latest.retry_of == failed and failed.status == IndexJob.Status.FAILED
