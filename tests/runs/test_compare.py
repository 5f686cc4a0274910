"""The compare page (issue 25): runs.selectors.compare_ids / compare_runs, the chart builder
runs.compare_charts, and the view at /runs/compare/?ids=… with its entry points (the run list's
checkboxes, a report's "compare with")."""

from __future__ import annotations

import json
import re

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404
from django.urls import reverse

from mergehub.evaluation.models import EvalResult, EvaluationJob
from mergehub.runs import selectors
from mergehub.runs.compare_charts import compare_scores_chart
from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db

MiB = 1 << 20


def _metrics(planned: int, *, read: int, seconds: float, sketches: int = 0, deviation: float | None = 0.0123) -> dict:
    metrics = {"full_expert_bytes": 8 * MiB, "budget_bytes": planned, "planned_expert_bytes": planned,
               "blocks_planned": 10, "blocks_total": 40, "expert_bytes_requested": planned - sketches,
               "expert_bytes_read": read, "base_bytes_read": 4 * MiB,
               "bytes_written": 4 * MiB, "certificate": 0.25,
               "seconds": {"plan": 0.01, "read": 0.2, "compute": seconds, "write": 0.1, "total": seconds + 0.31}}
    if deviation is not None:
        metrics["deviation"] = {"update_relative": deviation, "weight_relative": deviation / 10}
    if sketches:
        metrics.update(planned_sketch_bytes=sketches, sketches_planned=3, sketch_rank=8,
                       sketch_bytes_requested=sketches, sketch_bytes_read=sketches)
    return metrics


def _run(team, author, name, *, method="ties", budget="0.5", weights=(1.0, 0.5), seed=0, sketch_rank=None,
         metrics=None, status="succeeded") -> MergeRun:
    config = {"merge_method": method, "base_model": "/ckpt/base",
              "models": [{"model": f"/ckpt/expert-{i + 1}", "parameters": {"weight": w, "density": 0.7}}
                         for i, w in enumerate(weights)],
              "parameters": {"lambda": 1.0}, "checkpoint_ids": {}}
    return MergeRun.objects.create(team=team, author=author, name=name, method=method, budget=budget, seed=seed,
                                   sketch_rank=sketch_rank, config=config, status=status,
                                   metrics=metrics or {}, plan={"plan_digest": "ab" * 32, "budget_bytes": 4 * MiB})


def _evaluate(run: MergeRun, scores: dict[str, float]) -> None:
    """A finished evaluation of the run's merge with these scores (rows built directly)."""
    digest = f"merge-{run.pk}"
    EvaluationJob.objects.create(team=run.team, author=run.author, run=run, status="succeeded",
                                 subjects=[{"label": f"merge (run #{run.pk})", "role": "merge", "model_hash": digest}])
    for task, score in scores.items():
        EvalResult.objects.create(team=run.team, model_hash=digest, task_name=task, task_hash=f"t-{task}",
                                  settings_key="s", metric="exact_match", n=20, score=score,
                                  ci_low=max(0.0, score - 0.1), ci_high=min(1.0, score + 0.1))


@pytest.fixture
def runs(alice, acme):
    a = _run(acme, alice, "half budget", metrics=_metrics(4 * MiB, read=4 * MiB, seconds=1.0))
    b = _run(acme, alice, "full budget", budget="1", weights=(1.0, 0.25),
             metrics=_metrics(8 * MiB, read=8 * MiB, seconds=1.0, sketches=MiB))
    c = _run(acme, alice, "queued one", budget="1", status="queued")
    return a, b, c


def _rows(comparison) -> dict:
    return {row["key"]: row for section in comparison.sections for row in section["rows"]}


# --- the ids ----------------------------------------------------------------------------------

def test_ids_keep_their_order_and_drop_repeats():
    assert selectors.compare_ids(["8,3, 5,3"]) == [8, 3, 5]
    assert selectors.compare_ids(["8", "3"]) == [8, 3]  # as checkboxes send them


@pytest.mark.parametrize("values", [[], [""], ["3"], ["3,3"]])
def test_fewer_than_two_runs_is_a_clear_message(values):
    with pytest.raises(ValidationError, match="at least 2 runs"):
        selectors.compare_ids(values)


def test_more_than_eight_runs_is_refused():
    with pytest.raises(ValidationError, match="at most 8 runs"):
        selectors.compare_ids([",".join(str(i) for i in range(1, 10))])


@pytest.mark.parametrize("token", ["x", "-1", "1e3", "9" * 19])
def test_a_token_that_is_no_id_is_a_missing_run(token):
    with pytest.raises(Http404):
        selectors.compare_ids([f"1,{token}"])


# --- the selector -----------------------------------------------------------------------------

def test_differences_are_flagged_and_the_order_kept(alice, runs):
    a, b, c = runs
    comparison = selectors.compare_runs(user=alice, ids=[b.pk, a.pk, c.pk])
    assert [col["run"] for col in comparison.columns] == [b, a, c]
    assert [col["label"] for col in comparison.columns] == [f"#{b.pk} full budget", f"#{a.pk} half budget",
                                                            f"#{c.pk} queued one"]
    assert [s["title"] for s in comparison.sections][:2] == ["Configuration", "Plan and I/O"]
    rows = _rows(comparison)
    assert rows["method"] == {"key": "method", "label": "Method", "values": ["ties"] * 3, "differs": False}
    assert rows["budget"]["values"] == ["1 (4.00 MiB)", "0.5 (4.00 MiB)", "1 (4.00 MiB)"] and rows["budget"]["differs"]
    assert rows["experts"]["values"][0] == "expert-1 × 1.0 (density=0.7)\nexpert-2 × 0.25 (density=0.7)"
    assert rows["experts"]["differs"] and not rows["parameters"]["differs"]
    assert rows["parameters"]["values"][0] == "lambda=1.0"
    assert rows["seed"]["values"] == ["0", "0", "0"] and not rows["seed"]["differs"]
    assert rows["sketch_rank"]["values"] == ["the method's default"] * 3  # blank, and no plan says more
    assert rows["block_size"]["values"] == ["—"] * 3  # neither the run nor its plan recorded one
    # plan and I/O: the planned bytes with the sketch split where a run has one, measured bytes
    assert rows["planned_expert_bytes"]["values"][:2] == ["8.00 MiB (100.0% of full)", "4.00 MiB (50.0% of full)"]
    assert rows["planned_sketches"]["values"][:2] == ["1.00 MiB in 3 sketches of rank ≤ 8", "—"]
    assert rows["planned_blocks"]["values"][:2] == ["7.00 MiB", "—"]
    assert rows["expert_bytes_read"]["values"] == ["8.00 MiB", "4.00 MiB", "—"] and rows["expert_bytes_read"]["differs"]
    assert not rows["base_bytes_read"]["differs"] or rows["base_bytes_read"]["values"][2] == "—"
    assert rows["certificate"]["values"][:2] == ["≤ 0.25", "≤ 0.25"]
    assert rows["deviation_update_relative"]["values"] == ["0.0123", "0.0123", "—"]
    # times: equal when shown equal (measured floats), the queued run has none
    assert rows["seconds_compute"]["values"] == ["1.0 s", "1.0 s", "—"]
    assert rows["seconds_total"]["values"][0] == "1.3 s"
    assert comparison.differences == sum(r["differs"] for r in rows.values())
    assert comparison.tasks == [] and comparison.scores == []


def test_measured_floats_differ_as_shown(alice, acme):
    a = _run(acme, alice, "a", metrics=_metrics(MiB, read=MiB, seconds=2.0, deviation=0.012301))
    b = _run(acme, alice, "b", metrics=_metrics(MiB, read=MiB + 1, seconds=2.0001, deviation=0.012302))
    rows = _rows(selectors.compare_runs(user=alice, ids=[a.pk, b.pk]))
    assert not rows["seconds_compute"]["differs"] and not rows["deviation_update_relative"]["differs"]
    assert rows["expert_bytes_read"]["differs"]  # a byte apart: stored ints are compared as stored
    assert "planned_sketches" not in rows  # no run has sketches: the row is left out


def test_names_of_registered_checkpoints(registered_family, alice, acme, run_on_commit):
    from mergehub.runs.services import create_run
    from tests.pages.conftest import ties_inputs

    with run_on_commit():
        half = create_run(user=alice, team=acme, name="half", **ties_inputs(registered_family))
    with run_on_commit():
        full = create_run(user=alice, team=acme, name="full", **ties_inputs(registered_family, budget="1"))
    half.refresh_from_db(), full.refresh_from_db()
    assert half.status == full.status == "succeeded", (half.error, full.error)
    rows = _rows(selectors.compare_runs(user=alice, ids=[half.pk, full.pk]))
    e1, e2 = (e.name for e in registered_family["experts"])
    assert rows["base"]["values"] == [registered_family["base"].name] * 2
    assert rows["experts"]["values"][0] == f"{e1} × 1.0 (density=0.7)\n{e2} × 0.5 (density=0.7)"
    assert not rows["experts"]["differs"] and rows["budget"]["differs"]
    assert rows["planned_expert_bytes"]["differs"] and rows["seconds_total"]["values"][0] != "—"


def test_another_teams_run_is_a_missing_run(alice, mallory, rival, runs):
    a, b, _ = runs
    theirs = _run(rival, mallory, "rival run")
    for ids in ([a.pk, theirs.pk], [a.pk, 10**6]):
        with pytest.raises(Http404):
            selectors.compare_runs(user=alice, ids=ids)
    with pytest.raises(Http404):
        selectors.compare_runs(user=mallory, ids=[a.pk, b.pk])


def test_scores_are_overlaid_one_colour_per_run(alice, runs):
    a, b, c = runs
    _evaluate(a, {"reverse": 0.5, "sort": 0.75})
    _evaluate(b, {"sort": 0.8, "caesar": 0.3})
    comparison = selectors.compare_runs(user=alice, ids=[a.pk, b.pk, c.pk])
    assert comparison.tasks == ["reverse", "sort", "caesar"]
    assert [s["label"] for s in comparison.scores] == [f"#{a.pk} half budget", f"#{b.pk} full budget"]
    scores = next(s for s in comparison.sections if s["title"] == "Evaluation scores")["rows"]
    assert [r["label"] for r in scores] == ["reverse", "sort", "caesar"]
    assert scores[1]["values"] == ["0.750 [0.650–0.850] exact_match", "0.800 [0.700–0.900] exact_match", "—"]
    assert all(r["differs"] for r in scores)

    chart = compare_scores_chart(comparison.tasks, comparison.scores)
    figure = json.loads(chart.json)
    assert chart.id == "chart-compare-scores" and figure["layout"]["barmode"] == "group"
    assert [t["name"] for t in figure["data"]] == [f"#{a.pk} half budget", f"#{b.pk} full budget"]
    assert len({t["marker"]["color"] for t in figure["data"]}) == 2
    assert figure["data"][0]["x"] == ["reverse", "sort", "caesar"]
    assert figure["data"][0]["y"] == [0.5, 0.75, None] and figure["data"][1]["y"] == [None, 0.8, 0.3]
    assert compare_scores_chart([], []) is None


# --- the view ---------------------------------------------------------------------------------

def _url(*ids) -> str:
    return reverse("runs:compare") + "?ids=" + ",".join(map(str, ids))


def test_the_page_shows_the_table_with_differences_marked(alice_client, runs):
    a, b, _ = runs
    _evaluate(a, {"reverse": 0.5})
    response = alice_client.get(_url(b.pk, a.pk))
    assert response.status_code == 200
    page = response.content.decode()
    assert page.index(f"#{b.pk} full budget") < page.index(f"#{a.pk} half budget")
    assert '<tr id="row-budget" class="differs">' in page and '<tr id="row-method">' in page
    assert "expert-1 × 1.0 (density=0.7)<br>expert-2 × 0.25 (density=0.7)" in page
    assert 'id="chart-compare-scores"' in page and "plotly" in page


def test_without_scores_the_page_says_so(alice_client, runs):
    a, b, _ = runs
    page = alice_client.get(_url(a.pk, b.pk)).content.decode()
    assert 'id="compare-no-scores"' in page and "chart-compare-scores" not in page and "plotly" not in page


def test_checkboxes_are_sent_to_the_permalink(alice_client, runs):
    a, b, _ = runs
    response = alice_client.get(reverse("runs:compare"), {"ids": [str(b.pk), str(a.pk)]})
    assert response.status_code == 302 and response["Location"] == _url(b.pk, a.pk)


@pytest.mark.parametrize("query", ["", "?ids=", "?ids=5"])
def test_fewer_than_two_ids_is_a_clear_message(alice_client, query):
    response = alice_client.get(reverse("runs:compare") + query)
    assert response.status_code == 400
    assert "Choose at least 2 runs to compare" in response.content.decode()


def test_another_teams_run_answers_as_a_missing_one(mallory_client, alice_client, mallory, rival, runs):
    a, b, _ = runs
    theirs = _run(rival, mallory, "rival run")
    acme_404 = mallory_client.get(_url(a.pk, b.pk))
    missing_404 = mallory_client.get(_url(10**6, 10**6 + 1))
    assert acme_404.status_code == missing_404.status_code == 404
    token = re.compile(rb"[A-Za-z0-9]{64}")  # masked CSRF tokens differ per response
    assert token.sub(b"", acme_404.content) == token.sub(b"", missing_404.content)
    assert alice_client.get(_url(a.pk, theirs.pk)).status_code == 404
    assert alice_client.get(_url(a.pk, "x")).status_code == 404
    assert mallory_client.get(_url(theirs.pk, a.pk)).status_code == 404


def test_user_typed_names_are_escaped(alice_client, alice, acme):
    a = _run(acme, alice, "<script>alert(1)</script>", metrics=_metrics(MiB, read=MiB, seconds=1.0))
    b = _run(acme, alice, "<b>bold</b>", metrics=_metrics(MiB, read=MiB, seconds=1.0))
    b.config["models"][0]["model"] = "/ckpt/<i>x</i>"
    b.save()
    _evaluate(a, {"<img src=x>": 0.5})
    page = alice_client.get(_url(a.pk, b.pk)).content.decode()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "<i>x</i>" not in page and "<img src=x>" not in page


def test_the_run_list_and_the_report_link_to_the_page(alice_client, runs):
    a, b, c = runs
    page = alice_client.get(reverse("runs:list")).content.decode()
    assert f'action="{reverse("runs:compare")}"' in page and "Compare selected" in page
    assert f'name="ids" value="{a.pk}"' in page
    report = alice_client.get(reverse("runs:detail", args=[a.pk])).content.decode()
    assert 'id="compare-with"' in report and f'<input type="hidden" name="ids" value="{a.pk}">' in report
    assert f'<option value="{b.pk}">' in report and f'<option value="{a.pk}">' not in report
    dashboard = alice_client.get(reverse("dashboard:dashboard")).content.decode()
    assert 'name="ids"' not in dashboard  # the dashboard's run table has no checkboxes


def test_block_size_reads_in_bytes_and_the_default_sketch_rank_says_what_the_plan_used(alice, acme):
    first = _run(acme, alice, "default rank")
    first.block_size = MiB
    first.plan = {**first.plan, "sketch_rank": 32}
    first.save()
    second = _run(acme, alice, "off", sketch_rank=0)
    rows = _rows(selectors.compare_runs(user=alice, ids=[first.pk, second.pk]))
    assert rows["block_size"]["values"] == ["1.00 MiB", "—"]
    assert rows["sketch_rank"]["values"] == ["the method's default: 32", "0 (off: exact blocks only)"]
    assert rows["sketch_rank"]["differs"]
