"""Low-rank sketches on the pages: the merge form's "Sketch rank" field, the plan preview's split
of the planned bytes into sketches and exact blocks, the run report's I/O section, and the
checkpoint page's index summary (issue 27)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mergehub.engine.api import DEFAULT_SKETCH_RANK
from mergehub.runs.models import MergeRun
from mergehub.ui.formatting import human_bytes

pytestmark = pytest.mark.django_db


def _post(family, **overrides) -> dict:
    """The merge form as a browser posts it: task arithmetic of both experts at budget 0.25."""
    data = {"method": "task_arithmetic", "base": str(family["base"].pk), "budget": "0.25", "seed": "0",
            "dtype": "", "out_dtype": "", "name": "", "param__lambda": "1.0", "sketch_rank": ""}
    for expert in family["experts"]:
        data[f"expert_{expert.pk}__use"] = "on"
        data[f"expert_{expert.pk}__weight"] = "0.5"
    data.update(overrides)
    return data


def _text(response) -> str:
    return response.content.decode()


# --- the form ---------------------------------------------------------------------------------

def test_the_form_has_a_sketch_rank_field_that_says_what_it_is(alice_client, registered_sketch_family):
    html = _text(alice_client.get(reverse("runs:new")))
    assert 'name="sketch_rank"' in html and 'min="0"' in html and 'max="256"' in html
    assert "Low-rank sketches of each expert&#x27;s delta" in html
    assert f"Blank: the method&#x27;s default (rank {DEFAULT_SKETCH_RANK} for every method)." in html
    assert "0: off, exact blocks only." in html


@pytest.mark.parametrize(("value", "message"), [
    ("999", "Sketch rank must be a whole number from 0 (off) to 256, got 999."),
    ("-1", "Sketch rank must be a whole number from 0 (off) to 256, got -1."),
    ("1.5", "Enter a whole number."),
])
def test_the_form_refuses_a_bad_sketch_rank(alice_client, registered_sketch_family, value, message):
    response = alice_client.post(reverse("runs:new"), _post(registered_sketch_family, sketch_rank=value))
    assert response.status_code == 200 and response.context["form"].errors["sketch_rank"] == [message]
    assert message in _text(response) and not MergeRun.objects.exists()
    preview = alice_client.post(reverse("runs:preview"), _post(registered_sketch_family, sketch_rank=value))
    assert preview.context["plan"] is None and preview.context["problems"] == [f"Sketch rank: {message}"]


def test_a_rank_above_the_index_is_refused_on_its_field(alice_client, registered_sketch_family):
    indexed = registered_sketch_family["experts"][0].index_stats["sketch_rank"]
    response = alice_client.post(reverse("runs:new"), _post(registered_sketch_family, sketch_rank=str(indexed * 2)))
    [error] = response.context["form"].errors["sketch_rank"]
    assert error == (f"Sketch rank {indexed * 2}: lowrank-expert-1, lowrank-expert-2 are indexed with sketches up to "
                     f"rank {indexed}. A plan can only use the sketches the index made: set it to {indexed} or less, "
                     "or to 0 for exact blocks only.")
    assert not MergeRun.objects.exists()


# --- the plan preview ---------------------------------------------------------------------------

def test_the_preview_splits_the_planned_bytes_into_sketches_and_blocks(alice_client, registered_sketch_family):
    response = alice_client.post(reverse("runs:preview"), _post(registered_sketch_family))
    plan, split = response.context["plan"], response.context["sketches"]
    assert response.context["problems"] == []
    assert plan["sketch_rank"] > 0 and 0 < plan["sketch_bytes"] < plan["planned_expert_bytes"] <= plan["budget_bytes"]
    assert split == {"total": plan["planned_expert_bytes"], "sketches": plan["sketch_bytes"],
                     "blocks": plan["block_bytes"], "count": plan["sketches_planned"], "rank": plan["sketch_rank"],
                     "requested": None, "read": None}
    html = _text(response)
    assert (f'{human_bytes(plan["planned_expert_bytes"])}: {human_bytes(plan["sketch_bytes"])} in '
            f'{plan["sketches_planned"]} sketches of rank ≤ {plan["sketch_rank"]} + '
            f'{human_bytes(plan["block_bytes"])} of exact blocks') in html
    assert "<th class=\"num\">Sketches</th>" in html  # per expert
    assert sum(e["sketch_bytes"] for e in plan["per_expert"]) == plan["sketch_bytes"]


def test_the_preview_without_sketches_is_all_blocks(alice_client, registered_sketch_family):
    off = alice_client.post(reverse("runs:preview"), _post(registered_sketch_family, sketch_rank="0"))
    assert off.context["plan"]["sketch_bytes"] == 0 and off.context["sketches"] is None
    assert 'id="plan-split"' not in _text(off) and "<th class=\"num\">Sketches</th>" not in _text(off)
    # at the full budget every changed block fits: the sketches are there but none is read
    full = alice_client.post(reverse("runs:preview"), _post(registered_sketch_family, budget="1"))
    plan = full.context["plan"]
    assert plan["sketch_bytes"] == 0 and plan["sketches_available"] > 0 and full.context["sketches"] is None
    assert (f"{plan['sketches_available']} sketches of rank ≤ {plan['sketch_rank']} available; none used at this "
            "budget (every changed block fits the budget)") in _text(full)


# --- the run report -----------------------------------------------------------------------------

def test_the_report_shows_the_sketch_bytes_planned_and_read(alice_client, registered_sketch_family, run_on_commit):
    with run_on_commit():
        alice_client.post(reverse("runs:new"), _post(registered_sketch_family, name="with sketches"))
    run = MergeRun.objects.get()
    assert run.status == "succeeded", run.error
    assert run.sketch_rank is None  # blank: the method's default
    metrics = run.metrics
    assert metrics["sketch_rank"] > 0 and metrics["planned_sketch_bytes"] > 0 and metrics["sketches_planned"] > 0
    assert metrics["sketch_bytes_requested"] > 0 and metrics["sketch_bytes_read"] >= 0
    # what the run spared counts the sketches it read as spent, like the exact blocks
    assert run.expert_bytes_saved == (metrics["full_expert_bytes"] - metrics["expert_bytes_requested"]
                                      - metrics["sketch_bytes_requested"])
    page = alice_client.get(reverse("runs:detail", args=[run.pk]))
    html = _text(page)
    split = page.context["sketches"]
    assert split["sketches"] == metrics["planned_sketch_bytes"] and split["read"] == metrics["sketch_bytes_read"]
    assert split["blocks"] == metrics["planned_expert_bytes"] - metrics["planned_sketch_bytes"]
    assert 'id="io-table"' in html and 'id="io-sketches"' in html
    row = html[html.index('id="io-sketches"'):]
    row = row[:row.index("</tr>")]
    assert f"({metrics['sketches_planned']} of rank ≤ {metrics['sketch_rank']}, from the catalog)" in row
    for value in (metrics["planned_sketch_bytes"], metrics["sketch_bytes_requested"], metrics["sketch_bytes_read"]):
        assert human_bytes(value) in row
    assert (f"{human_bytes(metrics['planned_sketch_bytes'])} in {metrics['sketches_planned']} low-rank sketches of the "
            f"deltas (rank ≤ {metrics['sketch_rank']})") in html
    assert "the method's default · the plan uses" in html
    io = next(c for c in page.context["charts"] if c.id == "chart-io").figure.data[0]
    assert "Planned sketches" in io.y and "Sketch bytes read from storage" in io.y
    savings = next(c for c in page.context["charts"] if c.id == "chart-savings").figure.data[0]
    assert list(savings.labels) == ["Exact blocks read (planned)", "Sketches read (planned)", "Expert bytes skipped"]
    assert run.log[-1]["msg"].startswith(f"succeeded: read {human_bytes(metrics['expert_bytes_read'])} of ")
    assert f"(exact blocks) and {human_bytes(metrics['sketch_bytes_read'])} of" in run.log[-1]["msg"]


def test_a_run_without_sketches_shows_no_sketch_row(alice_client, registered_sketch_family, run_on_commit):
    with run_on_commit():
        alice_client.post(reverse("runs:new"), _post(registered_sketch_family, sketch_rank="0"))
    run = MergeRun.objects.get()
    assert run.status == "succeeded", run.error
    assert run.sketch_rank == 0 and run.metrics["planned_sketch_bytes"] == 0 and run.metrics["sketch_rank"] == 0
    page = alice_client.get(reverse("runs:detail", args=[run.pk]))
    html = _text(page)
    assert page.context["sketches"] is None and 'id="io-table"' in html and 'id="io-sketches"' not in html
    assert "0 (off: exact blocks only)" in html
    io = next(c for c in page.context["charts"] if c.id == "chart-io").figure.data[0]
    assert "Planned sketches" not in io.y and "Planned expert reads" in io.y


def test_an_older_run_without_sketch_metrics_still_renders(alice_client, succeeded_run):
    metrics = {k: v for k, v in succeeded_run.metrics.items() if "sketch" not in k}
    MergeRun.objects.filter(pk=succeeded_run.pk).update(metrics=metrics, sketch_rank=None)
    page = alice_client.get(reverse("runs:detail", args=[succeeded_run.pk]))
    assert page.status_code == 200 and page.context["sketches"] is None
    assert 'id="io-sketches"' not in _text(page)


def test_retry_keeps_the_sketch_rank(alice, registered_sketch_family, acme, run_on_commit):
    from mergehub.runs import services
    from tests.conftest import sketch_merge_inputs

    with run_on_commit():
        run = services.create_run(user=alice, team=acme, sketch_rank=0, **sketch_merge_inputs(registered_sketch_family))
    run.refresh_from_db()
    with run_on_commit():
        retry = services.retry_run(run=run, user=alice)
    retry.refresh_from_db()
    assert retry.sketch_rank == 0 and retry.status == "succeeded" and retry.metrics["planned_sketch_bytes"] == 0
    assert retry.plan["plan_digest"] == run.plan["plan_digest"]


# --- the checkpoint page ------------------------------------------------------------------------

def test_the_checkpoint_page_shows_the_index_sketches(alice_client, registered_sketch_family):
    expert = registered_sketch_family["experts"][0]
    stats = expert.index_stats
    html = _text(alice_client.get(reverse("registry:detail", args=[expert.pk])))
    assert 'id="index-sketches"' in html
    assert (f"up to rank {stats['sketch_rank']}: {human_bytes(stats['sketch_bytes'])} for "
            f"{stats['sketched_tensors']} tensors") in html
    assert "of the weights), made in" in html
