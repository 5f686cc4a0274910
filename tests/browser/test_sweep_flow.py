"""A budget sweep with low-rank sketches in a real browser: the merge form's plan preview says how
many bytes go to sketches and how many to exact blocks, "Sweep budgets" queues a sweep of task
arithmetic (sketches on by default), and the sweep page draws "sketch + blocks" and "blocks
only" as two curves on the same axes (issue 27).

Drives Debian's chromium as tests/browser/test_merge_flow.py does; django-q2 runs jobs in sync
mode (tests/conftest.py), so the sweep runs inside the request that queues it.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)
from tests.evaluation.conftest import registered_sketch_lm  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def test_sweep_with_sketches(browser_page, live_server, alice, registered_sketch_lm):  # noqa: F811
    from mergehub.evaluation.models import SweepJob
    from tests.conftest import PASSWORD

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")
    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # 1. task arithmetic of both experts at budget 0.25: the preview splits the planned bytes
    page.goto(url + "/runs/new/")
    page.select_option("select[name=method]", "task_arithmetic")
    page.wait_for_selector("input[name=param__lambda]")
    for expert in registered_sketch_lm["experts"]:
        page.check(f"input[name=expert_{expert.pk}__use]")
        page.fill(f"input[name=expert_{expert.pk}__weight]", "0.5")
    page.fill("input[name=budget]", "0.25")
    # the preview of the default budget (every changed block fits) may show first: wait for 0.25's
    split = page.locator("#plan-preview #plan-split", has_text="Split:")
    split.wait_for()
    assert re.search(r"^Split: [\d.]+ [KM]iB: [\d.]+ [KM]?i?B in \d+ sketches of rank ≤ \d+ \+ [\d.]+ [KM]iB of exact "
                     r"blocks$", " ".join(split.inner_text().split())), split.inner_text()
    # sketch rank 0: the preview refreshes to exact blocks only
    page.fill("input[name=sketch_rank]", "0")
    page.wait_for_selector("#plan-preview #plan-split", state="detached")
    page.fill("input[name=sketch_rank]", "")
    split.wait_for()
    _shot(page, "merge-form-sketches")

    # 2. sweep the configuration: both modes on the sweep page
    page.fill("input[name=sweep_budgets]", "0.1, 0.25")
    page.click("#sweep-button")
    page.wait_for_url(re.compile(r"/evaluation/sweeps/\d+/$"))
    page.wait_for_selector("#sweep-status.succeeded", timeout=60_000)
    sweep = SweepJob.objects.get()
    assert sweep.status == "succeeded", sweep.error
    for chart in ("chart-sweep-deviation", "chart-sweep-bytes"):
        page.wait_for_selector(f"#{chart} .main-svg")
    legend = page.locator("#chart-sweep-deviation .legend").text_content()  # an svg group
    assert "sketch + blocks" in legend and "blocks only" in legend
    # one curve per mode drawn; each mode's "relative to the weights" curve waits in the legend
    assert page.locator("#chart-sweep-deviation .scatterlayer .trace").count() == 2
    assert page.locator("#chart-sweep-deviation .legend .traces").count() == 4
    bytes_legend = page.locator("#chart-sweep-bytes .legend").text_content()
    assert "sketch + blocks: sketches" in bytes_legend and "blocks only: exact blocks" in bytes_legend
    modes = page.locator("#sweep-points tbody tr[data-mode]")
    assert modes.count() == 6
    assert [modes.nth(i).get_attribute("data-mode") for i in range(6)] == ["sketch", "blocks"] * 3
    _shot(page, "sweep-sketches")
