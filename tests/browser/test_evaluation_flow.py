"""Evaluation in a real browser: log in, register a task on the tasks page, configure a merge of
the tiny language-model family with "Evaluate after the merge on" ticked, start it, and read
the run report's Benchmark section: the Plotly chart drawn and the scores of the merge, its
base and its experts.

Drives Debian's chromium as tests/browser/test_merge_flow.py does; django-q2 runs jobs in sync
mode (tests/conftest.py), so the merge, and the evaluation its success queues, run inside the
request that starts the merge.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)
from tests.evaluation.conftest import lm_family, registered_lm, task_file  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def test_evaluate_after_merge(browser_page, live_server, alice, registered_lm, task_file):  # noqa: F811
    from mergehub.evaluation.models import EvalTask, EvaluationJob
    from mergehub.runs.models import MergeRun
    from tests.conftest import PASSWORD

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")

    # 1. log in
    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # 2. register the task from its path on the tasks page
    page.click("nav a:has-text('Tasks')")
    page.wait_for_selector("h1:has-text('Evaluation tasks')")
    page.fill("input[name=name]", "reverse")
    page.fill("input[name=path]", str(task_file))
    page.fill("input[name=max_new_tokens]", "6")
    page.click("button:has-text('Register')")
    page.wait_for_selector("text=Registered task reverse (6 examples).")
    assert "reverse" in page.locator("#task-table").inner_text()
    _shot(page, "tasks")
    task = EvalTask.objects.get(name="reverse")

    # 3. a task-arithmetic merge of both experts at budget 0.5, evaluated after the merge
    page.goto(url + "/runs/new/")
    page.select_option("select[name=method]", "task_arithmetic")
    page.wait_for_selector("input[name=param__lambda]")
    for expert in registered_lm["experts"]:
        page.check(f"input[name=expert_{expert.pk}__use]")
        page.fill(f"input[name=expert_{expert.pk}__weight]", "0.5")
    page.fill("input[name=budget]", "0.5")
    page.locator("#evaluate-panel").get_by_text("Evaluate after the merge on").wait_for()
    page.check(f"input[name=evaluate_tasks][value='{task.pk}']")
    page.locator("#plan-preview").locator("text=Planned expert reads").wait_for()
    _shot(page, "merge-form-evaluate")
    page.click("button:has-text('Start merge')")

    # 4. the run succeeded, and so did the evaluation it queued
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    page.wait_for_selector("#run-status.succeeded", timeout=60_000)
    run = MergeRun.objects.get()
    job = EvaluationJob.objects.get()
    assert run.status == "succeeded" and run.evaluate_task_ids == [task.pk]
    assert job.run == run and job.status == "succeeded", job.error

    # 5. the report's Benchmark section: the chart is drawn, the table has the four models
    benchmark = page.locator("#benchmark")
    assert benchmark.locator("h2").inner_text() == "Benchmark"
    # the page may have loaded while the evaluation still ran: its live part reloads the page
    # once the evaluation is done (and leaves it then)
    page.wait_for_selector("#evaluation-live", state="detached", timeout=60_000)
    page.wait_for_selector("#chart-benchmark .main-svg")
    # merge, base and two experts (plotly may still be adding traces when its svg appears)
    # (a locator, not a string predicate: polling one is an eval, which the pages' CSP refuses)
    bars = page.locator("#chart-benchmark .trace.bars")
    bars.nth(3).wait_for(timeout=10_000)
    assert bars.count() == 4
    rows = page.locator("#benchmark-table tbody tr")
    assert rows.count() == 4
    labels = [" ".join(rows.nth(i).locator("td").first.text_content().split()) for i in range(4)]
    assert labels == [f"merge (run #{run.pk}) merge", "lm-base base", "lm-expert-1 expert", "lm-expert-2 expert"]
    assert page.locator("#benchmark-table thead th").all_text_contents() == ["Model", "reverse"]
    for i in range(4):  # every model has a score in [0, 1]
        score = float(rows.nth(i).locator("td.num .mono").inner_text())
        assert 0.0 <= score <= 1.0
    assert benchmark.locator(f"a[href='/evaluation/evaluations/{job.pk}/']").count() == 1
    _shot(page, "run-benchmark")
    assert page.csp_violations == []
