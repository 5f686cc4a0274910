"""The whole product in a real browser: log in, register a family, configure a ties merge at
budget 0.5, watch it succeed, and read its report (Plotly charts drawn, bytes read named).

Drives Debian's chromium (/usr/bin/chromium) through Playwright's sync API against
pytest-django's live server; django-q2 runs jobs in sync mode (tests/conftest.py), so the
index and merge jobs run inside the requests that queue them. Set MERGEHUB_SCREENSHOT_DIR to
keep a PNG of every main page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"Debian's chromium is not installed at {CHROMIUM} "
                              "(apt-get install chromium); the browser test needs it"),
]


@pytest.fixture
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        external = []
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith((
            "http://localhost", "blob:http://localhost", "data:")) else None)
        # Content-Security-Policy violations: Chromium logs each one to the console; the page's
        # securitypolicyviolation events are logged too (an init script, which CSP does not govern).
        context.add_init_script("document.addEventListener('securitypolicyviolation', function (e) {"
                                " console.error('securitypolicyviolation: ' + e.violatedDirective + ' '"
                                " + e.blockedURI + ' at ' + e.documentURI); });")
        violations = []
        page.on("console", lambda m: violations.append(m.text) if (
            "Content Security Policy" in m.text or "securitypolicyviolation" in m.text) else None)
        page.csp_violations = violations  # for a test to assert on at its end
        yield page
        context.close()
        browser.close()
        assert external == [], f"pages loaded something from outside the server: {external}"
        assert violations == [], f"pages broke their Content-Security-Policy: {violations}"


def _shot(page, name: str) -> None:
    target = os.environ.get("MERGEHUB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def _register(page, url: str, *, name: str, role: str, path: Path) -> None:
    page.goto(url + "/checkpoints/new/")
    page.fill("input[name=name]", name)
    page.check(f"input[name=role][value={role}]")
    page.fill("input[name=family_name]", "tiny-llama")
    page.check("input[name=source][value=local]")
    page.fill("input[name=local_path]", str(path))
    if role == "base":
        _shot(page, "register")
    page.click("button:has-text('Register')")
    page.wait_for_url(re.compile(r"/checkpoints/\d+/$"))
    assert page.locator("h1").inner_text().startswith(name)


def test_merge_flow(browser_page, live_server, alice, family):
    from mergehub.registry.models import Checkpoint
    from mergehub.runs.models import MergeRun
    from mergehub.ui.formatting import human_bytes
    from tests.conftest import PASSWORD

    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")

    # 1. log in
    page.goto(url + "/")
    page.wait_for_url(re.compile(r"/login/"))
    _shot(page, "login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # 2. register a base and two experts (indexed by the sync job on commit)
    _register(page, url, name="base", role="base", path=family["base"])
    for i, path in enumerate(family["experts"], start=1):
        _register(page, url, name=f"expert-{i}", role="expert", path=path)
    page.wait_for_selector("#index-status.ready")
    page.wait_for_selector("#chart-delta-norms .main-svg")
    _shot(page, "checkpoint-detail")
    page.goto(url + "/checkpoints/")
    _shot(page, "checkpoints")

    # 3. configure a ties merge at budget 0.5
    experts = {c.name: c.pk for c in Checkpoint.objects.filter(role="expert")}
    page.goto(url + "/runs/new/")
    page.select_option("select[name=method]", "slerp")  # switching operators swaps the fields...
    page.wait_for_selector("input[name=param__t]")
    page.select_option("select[name=method]", "ties")  # ...and back
    page.wait_for_selector("input[name=param__lambda]")
    assert page.locator("input[name=param__t]").count() == 0
    for name, weight in (("expert-1", "1.0"), ("expert-2", "0.5")):
        pk = experts[name]
        page.check(f"input[name=expert_{pk}__use]")
        page.fill(f"input[name=expert_{pk}__weight]", weight)
        page.fill(f"input[name=expert_{pk}__density]", "0.7")
    page.fill("input[name=budget]", "0.5")
    preview = page.locator("#plan-preview")
    preview.locator("text=Planned expert reads").wait_for()
    preview.locator("text=Blocks chosen").wait_for()  # a locator: a string predicate is an eval, which the CSP refuses
    assert "Certificate" in preview.text_content()
    _shot(page, "merge-form")
    page.click("button:has-text('Start merge')")

    # 4. wait for "succeeded"
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    page.wait_for_selector("#run-status.succeeded", timeout=60_000)
    assert "succeeded" in page.locator("#run-status").inner_text().lower()

    # 5. the report's charts are drawn and the page names the bytes read
    for chart in ("chart-expert-bytes", "chart-io", "chart-savings", "chart-time"):
        page.wait_for_selector(f"#{chart} .main-svg")
    run = MergeRun.objects.get()
    assert run.status == "succeeded" and run.budget == "0.5" and run.method == "ties"
    text = page.locator("main").inner_text()
    assert "Expert bytes read from storage".lower() in text.lower()
    assert page.locator("#bytes-read").inner_text() == human_bytes(run.metrics["expert_bytes_read"])
    _shot(page, "run-detail")
    page.hover("#chart-io")  # Plotly's "Download plot as png" (a blob: image, which the CSP allows)
    page.locator("#chart-io .modebar-btn[data-title='Download plot as a PNG']").click()
    page.wait_for_selector(".plotly-notifier :text('Image download succeeded')")

    # 6. the live part: while the row says "running" the page polls it once a second, and when the
    #    row says "succeeded" it reloads into the report (the worker only ever writes the row, so
    #    writing the row here is what a worker would do)
    MergeRun.objects.filter(pk=run.pk).update(status="running", progress=0.4, stage="merge")
    page.reload()
    page.wait_for_selector("#run-status.running")
    assert "40%" in page.locator("#run-live").inner_text()
    assert page.locator("#chart-expert-bytes").count() == 0
    _shot(page, "run-running")
    MergeRun.objects.filter(pk=run.pk).update(status="succeeded", progress=1.0, stage="done")
    page.wait_for_selector("#chart-expert-bytes .main-svg", timeout=10_000)
    assert page.locator("#run-live[hx-trigger]").count() == 0  # polling stopped

    for name, path in (("dashboard", "/"), ("runs", "/runs/")):
        page.goto(url + path)
        _shot(page, name)
    assert page.csp_violations == []  # every page above kept to its Content-Security-Policy


def test_team_switcher_admin_and_lockout_pages_keep_the_policy(browser_page, live_server, alice, rival,
                                                               admin_user, settings):
    """The pages the merge flow does not visit: the team switcher (its script is in app.js, not
    an onchange attribute), the admin, and the page a locked-out login gets."""
    from mergehub.accounts.models import Membership
    from tests.conftest import PASSWORD

    settings.AXES_FAILURE_LIMIT = 2
    Membership.objects.create(user=alice, team=rival, role="viewer")
    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")

    for password in ("wrong", "wrong again"):
        page.goto(url + "/login/")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", password)
        page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Login temporarily locked')")
    assert "Logging in is locked until" in page.locator("#locked-out").inner_text()
    _shot(page, "locked-out")
    from axes.models import AccessAttempt
    AccessAttempt.objects.all().delete()  # what an admin does to lift a lock early

    page.goto(url + "/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")
    page.select_option("#team-switch", "rival")
    page.wait_for_selector("text=Now working in Rival")

    page.context.clear_cookies()
    page.goto(url + "/admin/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "password")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))
    page.goto(url + "/admin/auth/user/")
    page.wait_for_selector("#result_list")
    assert page.csp_violations == []
