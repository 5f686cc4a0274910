"""The run and checkpoint lists page through long histories: filters kept in the page links,
forgiving page numbers and a query count that does not grow with the history (the helper:
mergehub/ui/pagination.py)."""

from __future__ import annotations

import itertools

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun
from mergehub.ui.formatting import human_bytes

pytestmark = pytest.mark.django_db

GiB = 2**30


def make_runs(team, authors, n, *, start=0, status="succeeded", method="ties", saved=None):
    """``n`` runs in bulk, authors in turn; metrics and plan as the runner leaves them."""
    authors = itertools.cycle(authors)
    return MergeRun.objects.bulk_create([
        MergeRun(team=team, author=next(authors), name=f"run {start + i}", method=method, budget="0.5",
                 status=status, progress=1.0 if status == "succeeded" else 0.0,
                 plan={"planned_expert_bytes": GiB}, expert_bytes_saved=saved,
                 metrics={"expert_bytes_read": GiB, "full_expert_bytes": 4 * GiB} if status == "succeeded" else {})
        for i in range(n)])


def listed(response) -> list[str]:
    return [run.name for run in response.context["runs"]]


def test_run_list_pages_keep_the_filters(alice_client, alice, carol, acme):
    make_runs(acme, [alice, carol], 30, status="succeeded", method="ties")
    make_runs(acme, [alice], 10, start=100, status="failed", method="ties")
    make_runs(acme, [alice], 5, start=200, status="succeeded", method="linear")

    page1 = alice_client.get(reverse("runs:list"), {"status": "succeeded", "method": "ties"})
    html = page1.content.decode()
    assert page1.context["page_obj"].paginator.count == 30
    assert len(listed(page1)) == 25 and "30 runs · page 1 of 2" in html
    assert 'href="?status=succeeded&amp;method=ties&amp;page=2"' in html
    page2 = alice_client.get(reverse("runs:list"), {"status": "succeeded", "method": "ties", "page": 2})
    assert "page 2 of 2" in page2.content.decode() and len(listed(page2)) == 5
    assert set(listed(page1)).isdisjoint(listed(page2))
    assert {run.status for run in page2.context["runs"]} == {"succeeded"}

    by_carol = alice_client.get(reverse("runs:list"), {"author": "carol"})
    assert by_carol.context["page_obj"].paginator.count == 15
    assert "15 runs · page 1 of 1" in by_carol.content.decode()
    assert 'page=2' not in by_carol.content.decode()  # one page: no page links


def test_run_list_is_newest_first_across_pages(alice_client, alice, acme):
    make_runs(acme, [alice], 26)
    page1, page2 = (alice_client.get(reverse("runs:list"), {"page": p}) for p in (1, 2))
    assert listed(page1)[0] == "run 25" and listed(page2) == ["run 0"]


@pytest.mark.parametrize("page,shown", [("999", 3), ("0", 3), ("-1", 3), ("abc", 1), ("", 1), ("2.5", 1), ("2", 2)])
def test_page_numbers_out_of_range_or_garbage_never_fail(alice_client, alice, acme, page, shown):
    make_runs(acme, [alice], 60)
    response = alice_client.get(reverse("runs:list"), {"page": page})
    assert response.status_code == 200
    assert response.context["page_obj"].number == shown
    assert f"page {shown} of 3" in response.content.decode()


def test_the_table_shows_bytes_read_without_loading_the_json(alice_client, alice, acme):
    make_runs(acme, [alice], 1)
    make_runs(acme, [alice], 1, start=1, status="queued")
    response = alice_client.get(reverse("runs:list"))
    html = response.content.decode()
    assert f"{human_bytes(GiB)} of {human_bytes(4 * GiB)}" in html  # metrics, succeeded run
    assert f"{human_bytes(GiB)} planned" in html  # plan, queued run
    run = response.context["runs"][0]
    assert {"metrics", "plan", "config", "manifest", "log"} <= run.get_deferred_fields()


def test_team_scoping_holds_on_every_page(alice_client, mallory_client, alice, mallory, acme, rival):
    make_runs(acme, [alice], 30)
    make_runs(rival, [mallory], 3, start=500)
    assert alice_client.get(reverse("runs:list")).context["page_obj"].paginator.count == 30
    theirs = mallory_client.get(reverse("runs:list"), {"page": 2})
    assert theirs.context["page_obj"].paginator.count == 3 and set(listed(theirs)) == {"run 500", "run 501", "run 502"}


@pytest.mark.parametrize("url", ["runs:list", "dashboard:dashboard", "registry:list"])
def test_queries_per_page_do_not_grow_with_the_history(alice_client, alice, carol, acme, url,
                                                       django_assert_max_num_queries):
    make_runs(acme, [alice, carol], 3)
    Checkpoint.objects.bulk_create(Checkpoint(team=acme, name=f"c{i}", role="expert", added_by=alice)
                                   for i in range(3))
    with CaptureQueriesContext(connection) as few:
        assert alice_client.get(reverse(url)).status_code == 200
    make_runs(acme, [alice, carol], 57, start=3, status="failed")
    make_runs(acme, [carol], 30, start=100, status="queued")
    Checkpoint.objects.bulk_create(Checkpoint(team=acme, name=f"c{i}", role="expert", added_by=carol)
                                   for i in range(3, 60))
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert alice_client.get(reverse(url)).status_code == 200


def test_checkpoint_list_pages_and_filters(alice_client, alice, acme):
    Checkpoint.objects.bulk_create(
        [Checkpoint(team=acme, name=f"expert-{i:02d}", role="expert", index_status="ready") for i in range(30)]
        + [Checkpoint(team=acme, name=f"failed-{i}", role="expert", index_status="failed") for i in range(3)]
        + [Checkpoint(team=acme, name="base", role="base", index_status="ready")])
    url = reverse("registry:list")
    first = alice_client.get(url)
    assert first.context["page_obj"].paginator.count == 34 and "34 checkpoints · page 1 of 2" in first.content.decode()
    assert [c.name for c in first.context["checkpoints"]][:2] == ["base", "expert-00"]  # by name

    ready = alice_client.get(url, {"role": "expert", "status": "ready", "page": 2})
    html = ready.content.decode()
    assert [c.name for c in ready.context["checkpoints"]] == [f"expert-{i:02d}" for i in range(25, 30)]
    assert 'href="?status=ready&amp;role=expert&amp;page=1"' in html
    assert alice_client.get(url, {"status": "failed"}).context["page_obj"].paginator.count == 3
    assert alice_client.get(url, {"role": "base", "page": "x"}).context["page_obj"].paginator.count == 1
    empty = alice_client.get(url, {"status": "indexing"})
    assert "No checkpoints match." in empty.content.decode()
