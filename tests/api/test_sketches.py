"""``sketch_rank`` through the API: runs, plans and sweeps take it (or the config's
``mergehub: {sketch_rank: N}``), check it with the engine's rule, and show how the planned bytes
split between low-rank sketches and exact blocks (issue 27)."""

from __future__ import annotations

import pytest

from mergehub.evaluation.models import SweepJob
from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db

RUNS, PLANS, SWEEPS = "/api/v1/runs/", "/api/v1/plans/", "/api/v1/sweeps/"
TA = ("merge_method: task_arithmetic\nbase_model: lowrank-base\nmodels:\n"
      "  - model: lowrank-expert-1\n    parameters: {weight: 0.5}\n"
      "  - model: lowrank-expert-2\n    parameters: {weight: 0.5}\n")
BAD_RANK = "Sketch rank must be a whole number from 0 (off) to 256, got 999."


def test_a_run_takes_the_sketch_rank_and_reports_the_split(registered_sketch_family, writer, run_on_commit):
    with run_on_commit():
        response = writer.post(RUNS, {"config": TA, "budget": "0.25", "sketch_rank": 1}, format="json")
    assert response.status_code == 201, response.json()
    run = MergeRun.objects.get()
    assert run.sketch_rank == 1 and run.status == "succeeded", run.error
    body = writer.get(f"{RUNS}{run.pk}/").json()
    assert body["sketch_rank"] == 1
    plan, metrics = body["plan"], body["metrics"]
    assert plan["sketch_rank"] == 1 and plan["sketch_bytes"] > 0
    assert plan["block_bytes"] + plan["sketch_bytes"] == plan["planned_expert_bytes"] <= plan["budget_bytes"]
    assert metrics["planned_sketch_bytes"] == plan["sketch_bytes"] and metrics["sketch_rank"] == 1
    assert metrics["sketch_bytes_requested"] > 0 and metrics["sketch_bytes_read"] >= 0
    # the exported YAML keeps the rank, so submitting it again merges the same
    exported = writer.get(f"{RUNS}{run.pk}/config.yaml").content.decode()
    assert "  sketch_rank: 1\n" in exported and "--sketch-rank 1" in exported


def test_the_configs_mergehub_section_gives_the_default(registered_sketch_family, writer):
    response = writer.post(RUNS, {"config": TA + "mergehub: {sketch_rank: 0}\n", "budget": "0.25"}, format="json")
    assert response.status_code == 201, response.json()
    run = MergeRun.objects.get()
    assert run.sketch_rank == 0 and run.plan["sketch_bytes"] == 0 and run.plan["sketch_rank"] == 0
    # the body's own value wins over the section's
    response = writer.post(RUNS, {"config": TA + "mergehub: {sketch_rank: 0}\n", "budget": "0.25", "sketch_rank": 2},
                           format="json")
    assert response.status_code == 201 and MergeRun.objects.get(pk=response.json()["id"]).sketch_rank == 2


def test_no_sketch_rank_is_the_methods_default(registered_sketch_family, writer):
    response = writer.post(RUNS, {"config": TA, "budget": "0.25"}, format="json")
    assert response.status_code == 201, response.json()
    run = MergeRun.objects.get()
    assert run.sketch_rank is None and run.plan["sketch_rank"] > 0 and run.plan["sketch_bytes"] > 0


@pytest.mark.parametrize(("value", "message"), [
    (999, BAD_RANK), ("999", BAD_RANK), ("abc", "A valid integer is required."),
])
def test_a_bad_sketch_rank_is_a_400_naming_it(registered_sketch_family, writer, value, message):
    response = writer.post(RUNS, {"config": TA, "budget": "0.25", "sketch_rank": value}, format="json")
    assert response.status_code == 400 and response.json() == {"sketch_rank": [message]}
    response = writer.post(RUNS, {"config": TA + "mergehub: {sketch_rank: 999}\n", "budget": "0.25"}, format="json")
    assert response.status_code == 400 and response.json() == {"sketch_rank": [BAD_RANK]}
    assert not MergeRun.objects.exists()


def test_a_plan_takes_the_sketch_rank(registered_sketch_family, reader):
    on = reader.post(PLANS, {"config": TA, "budget": "0.25"}, format="json")
    off = reader.post(PLANS, {"config": TA, "budget": "0.25", "sketch_rank": 0}, format="json")
    assert on.status_code == off.status_code == 200, (on.json(), off.json())
    on, off = on.json(), off.json()
    assert on["sketch_bytes"] > 0 and on["sketches_planned"] > 0 and on["sketches_available"] > 0
    assert on["block_bytes"] == on["planned_expert_bytes"] - on["sketch_bytes"]
    assert sum(e["sketch_bytes"] for e in on["per_expert"]) == on["sketch_bytes"]
    assert off["sketch_bytes"] == 0 and off["sketch_rank"] == 0 and off["block_bytes"] == off["planned_expert_bytes"]
    assert on["certificate"] < off["certificate"]  # the rank-2 deltas are nearly all in the sketches
    bad = reader.post(PLANS, {"config": TA, "budget": "0.25", "sketch_rank": 999}, format="json")
    assert bad.status_code == 400 and bad.json() == {"sketch_rank": [BAD_RANK]}


def test_a_sweep_takes_the_sketch_rank(registered_sketch_family, writer):
    response = writer.post(SWEEPS, {"config": TA, "budgets": "0.25", "sketch_rank": 0}, format="json")
    assert response.status_code == 201, response.json()
    sweep = SweepJob.objects.get()
    assert sweep.sketch_rank == 0 and writer.get(f"{SWEEPS}{sweep.pk}/").json()["sketch_rank"] == 0
    bad = writer.post(SWEEPS, {"config": TA, "budgets": "0.25", "sketch_rank": 999}, format="json")
    assert bad.status_code == 400 and bad.json() == {"sketch_rank": [BAD_RANK]}
