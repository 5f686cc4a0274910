"""POST /api/v1/plans/: a plan preview of a mergekit config, nothing queued."""

from __future__ import annotations

import pytest

from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db

PLANS = "/api/v1/plans/"
TIES_YAML = ("merge_method: ties\nbase_model: base\nmodels:\n"
             "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
             "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")


def test_plan_of_yaml_text_matches_the_form_preview(registered_family, alice, acme, make_token, api,
                                                    django_capture_on_commit_callbacks):
    from mergehub.runs.services import preview_plan
    from tests.pages.conftest import ties_inputs

    with django_capture_on_commit_callbacks() as queued:
        response = api(make_token(alice, acme)[1]).post(PLANS, {"config": TIES_YAML, "budget": "0.5"})
    assert response.status_code == 200, response.json()
    plan = response.json()
    inputs = {k: v for k, v in ties_inputs(registered_family).items() if k != "seed"}
    expected = preview_plan(user=alice, team=acme, **inputs)
    for key in ("planned_expert_bytes", "full_expert_bytes", "certificate", "blocks_planned", "blocks_total",
                "plan_digest", "budget"):
        assert plan[key] == expected[key], key
    assert 0 < plan["planned_expert_bytes"] <= plan["full_expert_bytes"] // 2 + plan["block_size"]
    assert plan["certificate"] is None or plan["certificate"] >= 0
    experts = registered_family["experts"]
    assert [e["checkpoint_id"] for e in plan["per_expert"]] == [experts[0].pk, experts[1].pk]
    assert sum(e["planned_bytes"] for e in plan["per_expert"]) == plan["planned_expert_bytes"]
    assert not MergeRun.objects.exists() and queued == []


def test_plan_of_a_json_object_with_the_budget_in_its_section(registered_family, bob, acme, make_token, api):
    """A viewer's read-only token may plan: it changes nothing."""
    config = {"merge_method": "task_arithmetic", "base_model": "base",
              "models": [{"model": "expert-1", "parameters": {"weight": 1.0}}], "mergehub": {"budget": "1.0"}}
    response = api(make_token(bob, acme)[1]).post(PLANS, {"config": config})
    assert response.status_code == 200, response.json()
    plan = response.json()
    assert plan["budget"] == "1.0" and 0 < plan["blocks_planned"] <= plan["blocks_total"]
    assert plan["planned_expert_bytes"] == plan["nonzero_expert_bytes"]  # every changed block, no other
    assert plan["certificate"] == 0.0


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"config": TIES_YAML}, "budget", "Enter a budget"),
    ({"config": TIES_YAML, "budget": "0"}, "budget", "budget"),
    ({"config": TIES_YAML.replace("expert-2", "nope"), "budget": "0.5"}, "config", "is not one of your team's"),
    ({"config": "merge_method: [", "budget": "0.5"}, "config", ""),
    ({"config": 5, "budget": "0.5"}, "config", "YAML text or as a JSON object"),
    ({"budget": "0.5"}, "config", "required"),
])
def test_plan_errors_name_the_field(body, field, words, registered_family, alice, acme, make_token, api):
    response = api(make_token(alice, acme)[1]).post(PLANS, body)
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field] and words in " ".join(errors[field]), errors


def test_another_teams_checkpoint_names_resolve_to_nothing(registered_family, mallory, rival, make_token, api):
    response = api(make_token(mallory, rival, write=True)[1]).post(PLANS, {"config": TIES_YAML, "budget": "0.5"})
    assert response.status_code == 400
    assert "is not one of your team's checkpoints" in response.json()["config"][0]
