"""Run pages: the tags-and-note form on the report and the run list's search (runs/views.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice, acme):
    """A run row as the list and report show it (never executed)."""
    return MergeRun.objects.create(team=acme, author=alice, name="tagged run", method="ties", budget="0.5")


def test_members_edit_tags_and_note_on_the_report(run, carol_client):
    url = reverse("runs:notes", args=[run.pk])
    response = carol_client.post(url, {"tags": "Nightly, <i>bold</i>", "note": "line 1\n<script>alert(1)</script>"})
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:detail", args=[run.pk]) + "#run-notes"
    run.refresh_from_db()
    assert run.tag_list == ["nightly", "<i>bold</i>"] and run.note == "line 1\n<script>alert(1)</script>"
    page = carol_client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert '<span class="badge">nightly</span>' in page
    assert "&lt;i&gt;bold&lt;/i&gt;" in page and "<i>bold</i>" not in page
    assert "line 1<br>&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert url in page  # the edit form


def test_notes_by_role(run, bob_client, mallory_client, carol_client):
    url = reverse("runs:notes", args=[run.pk])
    data = {"tags": "x", "note": "y"}
    assert bob_client.post(url, data).status_code == 403
    assert mallory_client.post(url, data).status_code == 404
    assert carol_client.get(url).status_code == 405
    run.refresh_from_db()
    assert (run.tags, run.note) == ("", "")
    assert url not in bob_client.get(reverse("runs:detail", args=[run.pk])).content.decode()  # no form for viewers


def test_bad_tags_are_refused_with_the_reason(run, carol_client):
    response = carol_client.post(reverse("runs:notes", args=[run.pk]), {"tags": "a" * 41, "note": "kept?"},
                                 follow=True)
    assert "A tag has at most 40 characters" in response.content.decode()
    run.refresh_from_db()
    assert (run.tags, run.note) == ("", "")


def test_the_run_list_searches_and_keeps_the_search_in_page_links(alice, acme, mallory, rival, alice_client,
                                                                  mallory_client):
    MergeRun.objects.bulk_create(
        [MergeRun(team=acme, author=alice, name=f"run {i}", method="ties", budget="0.5",
                  tags="nightly" if i % 2 else "", note="" if i % 2 else "not a Nightly one")
         for i in range(60)]
        + [MergeRun(team=acme, author=alice, name="other", method="ties", budget="0.5")]
        + [MergeRun(team=rival, author=mallory, name="rival nightly", method="ties", budget="0.5", tags="nightly")])
    page1 = alice_client.get(reverse("runs:list"), {"q": "NIGHTLY", "status": "queued"})
    html = page1.content.decode()
    assert page1.context["page_obj"].paginator.count == 60 and len(page1.context["runs"]) == 25
    assert 'href="?status=queued&amp;q=NIGHTLY&amp;page=2"' in html
    assert 'value="NIGHTLY"' in html and "rival nightly" not in html
    page3 = alice_client.get(reverse("runs:list"), {"q": "NIGHTLY", "status": "queued", "page": 3})
    assert len(page3.context["runs"]) == 10
    assert [r.name for r in alice_client.get(reverse("runs:list"), {"q": "other"}).context["runs"]] == ["other"]
    assert [r.name for r in mallory_client.get(reverse("runs:list"), {"q": "nightly"}).context["runs"]] == [
        "rival nightly"]


def test_the_search_box_escapes_what_was_typed(alice_client, acme):
    html = alice_client.get(reverse("runs:list"), {"q": '"><script>x</script>'}).content.decode()
    assert "<script>x</script>" not in html and "&quot;&gt;&lt;script&gt;" in html
