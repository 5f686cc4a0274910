"""Comparing runs in a real browser (issue 25): log in, tick two runs on the run list, "Compare
selected", and read the compare page: the permalink, the diff table with the differing rows
marked, and the evaluation scores of both runs overlaid on one Plotly chart; then "Compare
with…" on a run's report opens the same kind of page.

Drives Debian's chromium as tests/browser/test_merge_flow.py does. The runs are rows written
as a worker would write them (this flow is about the pages, not the merge), and their scores
are stored evaluation results.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def test_compare_two_runs(browser_page, live_server, alice, acme):  # noqa: F811
    from tests.conftest import PASSWORD
    from tests.runs.test_compare import _evaluate, _metrics, _run

    MiB = 1 << 20
    half = _run(acme, alice, "half budget", metrics=_metrics(4 * MiB, read=4 * MiB, seconds=1.0))
    full = _run(acme, alice, "full budget", budget="1", weights=(1.0, 0.25),
                metrics=_metrics(8 * MiB, read=8 * MiB, seconds=2.0, sketches=MiB))
    other = _run(acme, alice, "not compared", status="queued")
    _evaluate(half, {"reverse": 0.5, "sort": 0.75})
    _evaluate(full, {"reverse": 0.6, "sort": 0.9})

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")
    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # 1. tick two runs on the run list (newest first: "full budget" above "half budget")
    page.goto(url + "/runs/")
    page.check(f"input[name=ids][value='{full.pk}']")
    page.check(f"input[name=ids][value='{half.pk}']")
    assert not page.is_checked(f"input[name=ids][value='{other.pk}']")
    _shot(page, "runs-compare-ticked")
    page.click("button:has-text('Compare selected')")

    # 2. the permalink, in the list's order
    page.wait_for_url(re.compile(rf"/runs/compare/\?ids={full.pk}(,|%2C){half.pk}$"))
    page.wait_for_selector("h1:has-text('Compare runs')")
    headers = page.locator("#compare-table thead th").all_text_contents()
    assert headers[1:] == [f"#{full.pk} full budget", f"#{half.pk} half budget"]

    # 3. the diff table: differing rows marked, equal ones not
    assert page.locator("#row-budget.differs").count() == 1
    assert page.locator("#row-experts.differs").count() == 1
    assert page.locator("#row-method.differs").count() == 0
    assert page.locator("#row-method td").all_inner_texts() == ["ties", "ties"]
    assert page.locator("#row-planned_sketches td").all_inner_texts() == ["1.00 MiB in 3 sketches of rank ≤ 8", "—"]
    assert page.locator("#row-seconds_total td").all_inner_texts() == ["2.3 s", "1.3 s"]

    # 4. the scores overlaid: one bar trace per run, drawn by Plotly
    page.wait_for_selector("#chart-compare-scores .main-svg")
    traces = page.evaluate("document.getElementById('chart-compare-scores').data.map(t => t.name)")
    assert traces == [f"#{full.pk} full budget", f"#{half.pk} half budget"]
    assert page.locator("#chart-compare-scores .barlayer .trace").count() == 2
    _shot(page, "runs-compare")

    # 5. "Compare with…" on a report
    page.goto(url + f"/runs/{other.pk}/")
    page.select_option("#compare-with-run", str(half.pk))
    page.click("#compare-with button:has-text('Compare')")
    page.wait_for_url(re.compile(rf"/runs/compare/\?ids={other.pk}(,|%2C){half.pk}$"))
    assert page.locator("#row-status.differs").count() == 1
    assert page.csp_violations == []
