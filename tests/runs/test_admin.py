"""The run and evaluation admin pages: sizes in binary units, JSON folded, computed fields read-only."""

import pytest
from django.urls import reverse

from mergehub.evaluation.models import EvalResult
from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db


def _run(registered_family, alice, acme):
    return MergeRun.objects.create(team=acme, author=alice, name="r", method="ties", budget="0.5",
                                   base=registered_family["base"], expert_bytes_saved=3 * 1024**2,
                                   metrics={"planned_expert_bytes": 1024, "secret_marker": "m1"},
                                   plan={"plan_digest": "d1"})


def test_run_sizes_read_in_binary_units(admin_client, registered_family, alice, acme):
    run = _run(registered_family, alice, acme)
    listing = admin_client.get(reverse("admin:runs_mergerun_changelist")).content.decode()
    assert "3.00 MiB" in listing and "3145728" not in listing
    page = admin_client.get(reverse("admin:runs_mergerun_change", args=[run.pk])).content.decode()
    assert "3.00 MiB" in page and 'name="expert_bytes_saved"' not in page  # computed: read-only


def test_run_json_is_folded_and_read_only(admin_client, registered_family, alice, acme):
    run = _run(registered_family, alice, acme)
    page = admin_client.get(reverse("admin:runs_mergerun_change", args=[run.pk])).content.decode()
    assert "<details><summary>2 entries</summary>" in page and "secret_marker" in page
    for field in ("config", "plan", "metrics", "manifest", "progress", "log"):
        assert f'name="{field}"' not in page
    assert 'name="name"' in page  # what a person chose stays editable


def test_evaluation_results_are_read_only(admin_client, acme):
    result = EvalResult.objects.create(team=acme, model_hash="h" * 64, task_name="t", task_hash="x" * 64,
                                       settings_key="s" * 64, metric="exact_match", n=2, score=0.5, ci_low=0.1,
                                       ci_high=0.9, samples=[{"prompt": "p", "output": "o"}])
    page = admin_client.get(reverse("admin:evaluation_evalresult_change", args=[result.pk])).content.decode()
    assert "<details><summary>1 entry</summary>" in page
    assert 'name="score"' not in page and 'name="samples"' not in page
