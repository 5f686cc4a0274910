"""The Django admin: every model is registered with list filters and search; re-index action."""

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


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelists_render_with_search_and_filters(admin_client, registered_family, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(url, {"q": "expert"}).status_code == 200


def test_checkpoint_filters(admin_client, registered_family):
    url = reverse("admin:registry_checkpoint_changelist")
    response = admin_client.get(url, {"role__exact": "expert", "index_status__exact": "ready"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 2


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
    from mergehub.web.formatting import human_bytes

    expert = registered_family["experts"][0]
    changelist = admin_client.get(reverse("admin:registry_checkpoint_changelist")).content.decode()
    assert human_bytes(expert.size_bytes) in changelist
    page = admin_client.get(reverse("admin:registry_checkpoint_change", args=[expert.pk])).content.decode()
    assert human_bytes(expert.size_bytes) in page
    assert "<details><summary>" in page and "&quot;block_size&quot;" in page  # the statistics, folded, escaped
    assert 'name="size_bytes"' not in page and 'name="index_stats"' not in page  # computed: not editable
