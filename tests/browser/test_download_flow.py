"""Getting a merged model out in a real browser (issue 25): log in as a viewer, open a succeeded
run's report, download one file from the "Get the model" panel and then "Download all", and
check the bytes the browser saved against the run's output directory.

Drives Debian's chromium as tests/browser/test_merge_flow.py does; the run is merged by the
(sync) worker before the browser starts (tests/publishing/conftest.py).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.browser.test_merge_flow import CHROMIUM, _shot, browser_page  # noqa: F401  (fixture)
from tests.publishing.conftest import merged_run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("os").path.exists(CHROMIUM),
                                 reason=f"Debian's chromium is not installed at {CHROMIUM} "
                                        "(apt-get install chromium); the browser test needs it")]


def _saved(download) -> bytes:
    assert download.failure() is None, download.failure()
    return Path(download.path()).read_bytes()


def test_download_a_merged_model(browser_page, live_server, merged_run, bob):  # noqa: F811
    from tests.conftest import PASSWORD

    out = Path(merged_run.output_path)
    page, url = browser_page, live_server.url.replace("127.0.0.1", "localhost")
    page.goto(url + "/login/")
    page.fill("input[name=username]", "bob")  # a viewer: every role of the team downloads
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Dashboard')")

    # 1. the report's panel lists the files with their sizes
    page.goto(url + f"/runs/{merged_run.pk}/")
    page.wait_for_selector("#model #model-files")
    listed = page.locator("#model-files tbody td:first-child").all_inner_texts()
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.is_file())
    assert page.locator("#push-form").count() == 0  # a viewer cannot push
    _shot(page, "run-download-panel")

    # 2. one file
    with page.expect_download() as info:
        page.click("#model-files a:text-is('config.json')")
    assert info.value.suggested_filename == "config.json"
    assert _saved(info.value) == (out / "config.json").read_bytes()

    # 3. everything, as one tar
    with page.expect_download() as info:
        page.click("#download-all")
    assert info.value.suggested_filename == f"mergehub-run-{merged_run.pk}.tar"
    with tarfile.open(fileobj=io.BytesIO(_saved(info.value))) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == {f"mergehub-run-{merged_run.pk}/{p.name}": p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert page.csp_violations == []
