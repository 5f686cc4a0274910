"""The Django admin: every model is registered with list filters and search, which narrow the rows
the changelist shows; the re-index action; sizes and index statistics read-only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from mergehub.accounts.models import Membership, Team
from mergehub.registry.models import Checkpoint, Family
from mergehub.runs.models import MergeRun

MODELS = [Team, Membership, Family, Checkpoint, MergeRun]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_model_has_filters_and_search(model):
    model_admin = admin.site._registry[model]
    assert model_admin.search_fields
    assert model_admin.list_filter or model is Team


def _changelist(admin_client, model, query: dict | None = None):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    response = admin_client.get(url, query or {})
    assert response.status_code == 200
    return response


def _result_table(response) -> str:
    """The changelist's table of rows as rendered (empty when nothing matched); the filter
    sidebar, which names every team and family, is left out."""
    html = response.content.decode()
    start = html.find('<table id="result_list">')
    return "" if start < 0 else html[start:html.index("</table>", start)]


@pytest.fixture
def admin_rows(registered_family, alice, bob, acme, mallory, rival):
    """Acme's indexed family and two runs, beside a family and members in rival: every
    changelist has rows that a search or a filter must keep and rows it must leave out."""
    Family.objects.create(team=rival, name="rival-family")
    for name, method in (("math-mix", "ties"), ("code-mix", "task_arithmetic")):
        MergeRun.objects.create(team=acme, author=alice, name=name, method=method, budget="0.5",
                                base=registered_family["base"])
    return registered_family


# model, query, names on the page, names that must not be in its rows
LISTINGS = [
    (Team, {"q": "acm"}, ["Acme"], ["Rival"]),
    (Membership, {"q": "mallory"}, ["mallory", "Rival"], ["alice", "bob"]),
    (Membership, {"role__exact": "viewer"}, ["bob"], ["alice", "mallory"]),
    (Family, {"q": "tiny"}, ["tiny-llama"], ["rival-family"]),
    (Family, {"team__id__exact": "{rival_id}"}, ["rival-family"], ["tiny-llama"]),
    (Checkpoint, {"q": "expert"}, ["expert-1", "expert-2"], [">base<"]),
    (Checkpoint, {"role__exact": "base"}, [">base<"], ["expert-1", "expert-2"]),
    (MergeRun, {"q": "math"}, ["math-mix"], ["code-mix"]),
    (MergeRun, {"method__exact": "task_arithmetic"}, ["code-mix"], ["math-mix"]),
]


@pytest.mark.parametrize("model,query,shown,hidden", LISTINGS,
                         ids=[f"{m.__name__}-{next(iter(q))}" for m, q, *_ in LISTINGS])
def test_changelists_search_and_filter_their_rows(admin_client, admin_rows, rival, model, query,
                                                  shown, hidden):
    query = {key: value.format(rival_id=rival.pk) for key, value in query.items()}
    unfiltered = _result_table(_changelist(admin_client, model))
    for name in hidden:
        assert name in unfiltered  # without the query the row is there ...
    response = _changelist(admin_client, model, query)
    rows = _result_table(response)
    for name in shown:
        assert name in rows
    for name in hidden:
        assert name not in rows  # ... and the query leaves it out
    assert response.context["cl"].result_count < response.context["cl"].full_result_count


def test_a_search_that_matches_nothing_shows_no_rows(admin_client, admin_rows):
    response = _changelist(admin_client, Checkpoint, {"q": "no-such-checkpoint"})
    assert response.context["cl"].result_count == 0
    assert _result_table(response) == ""
    assert "0 checkpoints" in response.content.decode()


def test_checkpoint_filters(admin_client, registered_family):
    response = _changelist(admin_client, Checkpoint, {"role__exact": "expert", "index_status__exact": "ready"})
    assert response.context["cl"].result_count == 2
    rows = _result_table(response)
    assert "expert-1" in rows and "expert-2" in rows and ">base<" not in rows
    Checkpoint.objects.filter(pk=registered_family["experts"][0].pk).update(index_status="failed")
    rows = _result_table(_changelist(admin_client, Checkpoint, {"role__exact": "expert",
                                                                 "index_status__exact": "ready"}))
    assert "expert-1" not in rows and "expert-2" in rows


def test_reindex_action_queues_experts(admin_client, registered_family, run_on_commit):
    experts = registered_family["experts"]
    Checkpoint.objects.filter(pk__in=[e.pk for e in experts]).update(index_status="failed", index_error="x")
    url = reverse("admin:registry_checkpoint_changelist")
    with run_on_commit():
        response = admin_client.post(url, {"action": "reindex", "_selected_action": [e.pk for e in experts]},
                                     follow=True)
    assert "Queued 2 checkpoint(s) for indexing." in response.content.decode()
    assert set(Checkpoint.objects.filter(role="expert").values_list("index_status", flat=True)) == {"ready"}


def test_checkpoint_size_reads_in_binary_units_and_its_index_stats_are_folded(admin_client, registered_family):
    from mergehub.ui.formatting import human_bytes

    expert = registered_family["experts"][0]
    changelist = admin_client.get(reverse("admin:registry_checkpoint_changelist")).content.decode()
    assert human_bytes(expert.size_bytes) in changelist
    page = admin_client.get(reverse("admin:registry_checkpoint_change", args=[expert.pk])).content.decode()
    assert human_bytes(expert.size_bytes) in page
    assert "<details><summary>" in page and "&quot;block_size&quot;" in page  # the statistics, folded, escaped
    assert 'name="size_bytes"' not in page and 'name="index_stats"' not in page  # computed: not editable
