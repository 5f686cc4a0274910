"""Comments' Markdown renders formatting and never lets HTML, scripts or images through."""

import pytest

from mergehub.reviews.markdown import render


def test_formatting_renders():
    html = render("**bold** and `code`\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<li>one</li>" in html and "<table>" in html


@pytest.mark.parametrize("source", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "hello <b onmouseover=alert(1)>there</b>",
    "<iframe src='https://evil.example'></iframe>",
])
def test_raw_html_is_shown_as_text(source):
    html = render(source)
    assert "<script" not in html and "<img" not in html and "<b " not in html and "<iframe" not in html
    assert "&lt;" in html


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JAVASCRIPT:alert(1)", "vbscript:msgbox(1)",
                                 "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="])
def test_unsafe_link_schemes_are_not_links(url):
    html = render(f"[click]({url})")
    assert "<a" not in html and "href" not in html


def test_links_are_marked_and_images_are_not_fetched():
    html = render("[docs](https://example.com/docs) ![pixel](https://tracker.example/p.png)")
    assert '<a href="https://example.com/docs" rel="nofollow noopener noreferrer">docs</a>' in html
    assert "<img" not in html


def test_empty_source():
    assert render("") == "" and render(None) == ""
