"""Evaluation pages: each renders for a member with what it should show, the forms post to the
services, htmx live parts end with HX-Refresh, and no page shows another team's tasks."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mergehub.evaluation import sweeps
from mergehub.evaluation.models import EvalTask, EvaluationJob, FamilyJob, SweepJob
from mergehub.runs.models import MergeRun

from .conftest import lm_merge_inputs

pytestmark = pytest.mark.django_db


def _text(response) -> str:
    return response.content.decode()


def _merge_post(registered_lm, **overrides) -> dict:
    """The merge form as a browser posts it: task arithmetic of both LM experts at budget 0.5."""
    data = {"method": "task_arithmetic", "base": str(registered_lm["base"].pk), "budget": "0.5", "seed": "0",
            "dtype": "", "out_dtype": "", "name": "", "param__lambda": "1.0", "sweep_budgets": "0.25, 0.5"}
    for expert in registered_lm["experts"]:
        data[f"expert_{expert.pk}__use"] = "on"
        data[f"expert_{expert.pk}__weight"] = "0.5"
    data.update(overrides)
    return data


# --- the tasks page ---------------------------------------------------------------------------

def test_the_tasks_page_lists_tasks_and_offers_the_register_form(carol_client, reverse_task):
    response = carol_client.get(reverse("evaluation:tasks"))
    assert response.status_code == 200
    html = _text(response)
    assert 'id="task-table"' in html and "<strong>reverse</strong>" in html and "Exact match" in html
    assert reverse_task.content_hash[:12] in html and "max_new_tokens=6" in html
    assert "Register a task" in html and 'name="path"' in html and 'name="upload"' in html
    assert 'enctype="multipart/form-data"' in html
    assert reverse("evaluation:task_delete", args=[reverse_task.pk]) in html
    assert 'value="lm_eval"' not in html  # off on this site
    assert "Train the demo family" not in html  # admins only


def test_a_viewer_sees_tasks_but_no_register_form(bob_client, reverse_task):
    html = _text(bob_client.get(reverse("evaluation:tasks")))
    assert "<strong>reverse</strong>" in html and "Viewers cannot register tasks." in html
    assert 'name="upload"' not in html and "task_delete" not in html and "Delete</button>" not in html


def test_register_a_task_by_upload(carol_client, task_file, acme):
    response = carol_client.post(reverse("evaluation:tasks"), {
        "name": "uploaded", "kind": "auto", "max_new_tokens": "6", "stop": r"\n",
        "upload": SimpleUploadedFile("words.jsonl", task_file.read_bytes())}, follow=True)
    assert response.redirect_chain == [(reverse("evaluation:tasks"), 302)]
    task = EvalTask.objects.get(team=acme, name="uploaded")
    assert task.source == "upload" and task.settings["max_new_tokens"] == 6 and task.settings["stop"] == "\n"
    assert "Registered task uploaded (6 examples)." in _text(response)


def test_a_refused_registration_shows_the_reason_on_the_form(carol_client, reverse_task, task_file, tmp_path):
    response = carol_client.post(reverse("evaluation:tasks"), {"name": "reverse", "kind": "auto",
                                                               "path": str(task_file)})
    assert response.status_code == 200 and "Acme already has a task named &#x27;reverse&#x27;." in _text(response)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "target": "b"}\nnot json\n')
    response = carol_client.post(reverse("evaluation:tasks"), {"name": "broken", "kind": "auto", "path": str(broken)})
    assert response.status_code == 200 and "line 2: not valid JSON" in _text(response)
    assert EvalTask.objects.count() == 1


def test_delete_a_task(carol_client, reverse_task):
    response = carol_client.post(reverse("evaluation:task_delete", args=[reverse_task.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("evaluation:tasks")
    assert not EvalTask.objects.exists() and "Deleted task reverse; its scores are kept." in _text(response)


# --- the demo family's training -----------------------------------------------------------------------

def test_an_admin_starts_the_training_from_the_tasks_page(alice, acme, alice_client):
    client = alice_client
    assert "Train the demo family" in _text(client.get(reverse("evaluation:tasks")))
    response = client.post(reverse("evaluation:family_train"), {"seed": "7"}, follow=True)
    job = FamilyJob.objects.get()
    assert job.seed == 7 and job.status == "queued" and job.author == alice
    html = _text(response)
    assert f"Training #{job.pk} of tiny-llama (seed 7)" in html and "Stop training" in html
    assert reverse("evaluation:family_live", args=[job.pk]) in html
    assert "Train the demo family" not in html  # one at a time
    live = client.get(reverse("evaluation:family_live", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and 'id="family-job-status"' in _text(live)
    client.post(reverse("evaluation:family_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == "cancelled"
    live = client.get(reverse("evaluation:family_live", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 204 and live["HX-Refresh"] == "true"


def test_a_bad_seed_or_a_member_is_refused(alice_client, carol_client):
    client = alice_client
    response = client.post(reverse("evaluation:family_train"), {"seed": "seven"}, follow=True)
    assert "The seed must be a whole number." in _text(response) and not FamilyJob.objects.exists()
    assert carol_client.post(reverse("evaluation:family_train"), {"seed": "0"}).status_code == 403
    assert not FamilyJob.objects.exists()


# --- the run report -----------------------------------------------------------------------------

def test_the_run_report_shows_the_benchmark(carol_client, evaluated_run):
    run, job = evaluated_run["run"], evaluated_run["job"]
    response = carol_client.get(reverse("runs:detail", args=[run.pk]))
    assert response.status_code == 200
    html = _text(response)
    assert '<section class="panel" id="benchmark"' in html and "<h2>Benchmark</h2>" in html
    assert reverse("evaluation:detail", args=[job.pk]) in html
    assert 'id="chart-benchmark"' in html and 'id="benchmark-table"' in html and 'id="kept-table"' in html
    for label in (f"merge (run #{run.pk})", "lm-base", "lm-expert-1", "lm-expert-2"):
        assert f"<td>{label} <span" in html
    assert "Samples" in html and "reverse:abcd=" in html
    assert reverse("evaluation:evaluate_run", args=[run.pk]) in html and "Evaluate merge, base and experts" in html
    chart = response.context["benchmark_chart"]
    assert [t.name for t in chart.figure.data] == [f"merge (run #{run.pk})", "lm-base", "lm-expert-1", "lm-expert-2"]


def test_a_run_not_evaluated_offers_the_evaluate_form(carol_client, bob_client, lm_run, reverse_task):
    html = _text(carol_client.get(reverse("runs:detail", args=[lm_run.pk])))
    assert "Not evaluated yet." in html and 'id="benchmark-table"' not in html
    assert f'name="tasks" value="{reverse_task.pk}" checked' in html
    assert "Evaluate merge, base and experts" not in _text(bob_client.get(reverse("runs:detail", args=[lm_run.pk])))


def test_evaluate_a_run_from_its_report(carol_client, lm_run, reverse_task):
    response = carol_client.post(reverse("evaluation:evaluate_run", args=[lm_run.pk]), {"tasks": [reverse_task.pk]})
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:detail", args=[lm_run.pk]) + "#benchmark"
    job = EvaluationJob.objects.get()
    assert job.run == lm_run and job.with_references and list(job.tasks.all()) == [reverse_task]
    # without a task: an error message, nothing queued
    response = carol_client.post(reverse("evaluation:evaluate_run", args=[lm_run.pk]), {}, follow=True)
    assert "Choose at least one of your team&#x27;s tasks." in _text(response) and EvaluationJob.objects.count() == 1


# --- the checkpoint page ------------------------------------------------------------------------

def test_the_checkpoint_page_shows_scores_and_evaluates(carol_client, registered_lm, reverse_task,
                                                        django_capture_on_commit_callbacks):
    base = registered_lm["base"]
    html = _text(carol_client.get(reverse("registry:detail", args=[base.pk])))
    assert "<h2>Scores</h2>" in html and "Not scored yet." in html and "Evaluate lm-base" in html
    with django_capture_on_commit_callbacks(execute=True):
        response = carol_client.post(reverse("evaluation:evaluate_checkpoint", args=[base.pk]),
                                     {"tasks": [reverse_task.pk]})
    job = EvaluationJob.objects.get()
    assert response["Location"] == reverse("evaluation:detail", args=[job.pk])
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    html = _text(carol_client.get(reverse("registry:detail", args=[base.pk])))
    assert 'id="checkpoint-scores"' in html and "<td>reverse</td><td>exact_match</td>" in html
    assert reverse("evaluation:detail", args=[job.pk]) in html


# --- the evaluation page ------------------------------------------------------------------------

def test_the_evaluation_page(carol_client, evaluated_run):
    run, job = evaluated_run["run"], evaluated_run["job"]
    response = carol_client.get(reverse("evaluation:detail", args=[job.pk]))
    assert response.status_code == 200
    html = _text(response)
    assert f"Evaluation #{job.pk}" in html and f"Run #{run.pk}" in html and "with its base and experts" in html
    assert 'id="chart-benchmark"' in html and 'id="benchmark-table"' in html and "lm-expert-2" in html
    assert reverse("evaluation:retry", args=[job.pk]) in html and "succeeded: scored 4 model(s)" in html
    live = carol_client.get(reverse("evaluation:live", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 204 and live["HX-Refresh"] == "true"


def test_cancel_and_retry_an_evaluation(carol_client, registered_lm, reverse_task, alice, acme):
    from mergehub.evaluation import services

    job = services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=registered_lm["base"])
    html = _text(carol_client.get(reverse("evaluation:detail", args=[job.pk])))
    assert reverse("evaluation:cancel", args=[job.pk]) in html and reverse("evaluation:live", args=[job.pk]) in html
    live = carol_client.get(reverse("evaluation:live", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and 'id="evaluation-status"' in _text(live)
    response = carol_client.post(reverse("evaluation:retry", args=[job.pk]), follow=True)
    assert "is still queued" in _text(response) and EvaluationJob.objects.count() == 1
    carol_client.post(reverse("evaluation:cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == "cancelled"
    response = carol_client.post(reverse("evaluation:retry", args=[job.pk]))
    retry = EvaluationJob.objects.get(retry_of=job)
    assert response["Location"] == reverse("evaluation:detail", args=[retry.pk])


# --- the merge form -----------------------------------------------------------------------------

def test_the_merge_form_offers_evaluation_and_sweeps(carol_client, registered_lm, reverse_task):
    response = carol_client.get(reverse("runs:new"))
    html = _text(response)
    assert "Evaluate after the merge on" in html and f'name="evaluate_tasks" value="{reverse_task.pk}"' in html
    assert 'id="sweep-button"' in html and f'formaction="{reverse("evaluation:sweep_new")}"' in html
    assert "Sweep budgets" in html and 'name="sweep_budgets"' in html


def test_the_merge_form_queues_an_evaluation_after_the_merge(carol_client, registered_lm, reverse_task,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = carol_client.post(reverse("runs:new"), _merge_post(registered_lm, evaluate_tasks=[reverse_task.pk]))
    run = MergeRun.objects.get()
    assert response["Location"] == reverse("runs:detail", args=[run.pk])
    assert run.evaluate_task_ids == [reverse_task.pk] and run.status == "succeeded", run.error
    assert run.evaluations.get().status == "succeeded"


def test_sweep_budgets_from_the_merge_form(carol_client, registered_lm, reverse_task):
    response = carol_client.post(reverse("evaluation:sweep_new"),
                                 _merge_post(registered_lm, evaluate_tasks=[reverse_task.pk]))
    sweep = SweepJob.objects.get()
    assert response["Location"] == reverse("evaluation:sweep", args=[sweep.pk])
    assert sweep.budgets == ["0.25", "0.5", "1"] and sweep.method == "task_arithmetic"
    assert list(sweep.tasks.all()) == [reverse_task] and sweep.status == "queued"
    assert sweep.form_data["method"] == ["task_arithmetic"] and "csrfmiddlewaretoken" not in sweep.form_data
    assert not MergeRun.objects.exists()


def test_a_bad_sweep_is_shown_on_the_merge_form(carol_client, registered_lm):
    response = carol_client.post(reverse("evaluation:sweep_new"), _merge_post(registered_lm, sweep_budgets="0.5, lots"))
    assert response.status_code == 200 and "lots: budget" in _text(response)
    assert 'id="sweep-button"' in _text(response) and not SweepJob.objects.exists()


def test_a_viewer_cannot_sweep(bob_client, registered_lm):
    assert bob_client.post(reverse("evaluation:sweep_new"), _merge_post(registered_lm)).status_code == 403
    assert not SweepJob.objects.exists()


# --- sweeps -------------------------------------------------------------------------------------

@pytest.fixture
def finished_sweep(registered_lm, carol_client, run_on_commit):
    """A sweep queued from the merge form (no tasks) and run."""
    with run_on_commit():
        carol_client.post(reverse("evaluation:sweep_new"),
                          _merge_post(registered_lm, sweep_budgets="0.1, 0.25", sketch_rank="0"))
    sweep = SweepJob.objects.get()
    assert sweep.status == "succeeded", sweep.error
    return sweep


def test_the_sweep_page_shows_the_points_and_starts_a_merge_at_a_budget(carol_client, finished_sweep):
    response = carol_client.get(reverse("evaluation:sweep", args=[finished_sweep.pk]))
    assert response.status_code == 200
    html = _text(response)
    assert 'id="sweep-points"' in html and html.count("Start this merge") == 3
    assert 'id="chart-sweep-deviation"' in html and 'id="chart-sweep-bytes"' in html
    assert 'id="chart-sweep-scores"' not in html  # no tasks, no scores
    point = response.context["points"][1]
    assert point["budget"] == "0.25"
    query = parse_qs(urlsplit(point["merge_url"]).query)
    assert query["budget"] == ["0.25"] and query["method"] == ["task_arithmetic"]
    assert point["merge_url"].replace("&", "&amp;") in html
    form = carol_client.get(point["merge_url"]).context["form"]
    assert form["budget"].value() == "0.25" and form["method"].value() == "task_arithmetic"
    assert 'name="budget" value="0.25"' in _text(carol_client.get(point["merge_url"]))


def _chart_names(response, chart_id: str) -> list[str]:
    """The trace names of a chart the page embeds (ui/_chart.html: its JSON in a script)."""
    chart = next(c for c in response.context["charts"] if c.id == chart_id)
    return [trace["name"] for trace in json.loads(chart.json)["data"]]


def test_the_sweep_page_compares_sketches_with_blocks_only(carol_client, registered_sketch_lm, reverse_task,
                                                          run_on_commit):
    """A task arithmetic sweep (sketches on by default) from the merge form: every chart draws
    "sketch + blocks" and "blocks only" on the same axes, the table says each row's mode and
    sketch bytes, and "Start this merge" carries the row's sketch rank (0 for blocks only)."""
    with run_on_commit():
        carol_client.post(reverse("evaluation:sweep_new"),
                          _merge_post(registered_sketch_lm, sweep_budgets="0.25", evaluate_tasks=[reverse_task.pk]))
    sweep = SweepJob.objects.get()
    assert sweep.status == "succeeded", sweep.error
    response = carol_client.get(reverse("evaluation:sweep", args=[sweep.pk]))
    html = _text(response)
    # the mean score of each mode is a curve; each task's own curves are one legend click away
    assert _chart_names(response, "chart-sweep-scores") == [
        "reverse · sketch + blocks", "sketch + blocks", "reverse · blocks only", "blocks only"]
    assert _chart_names(response, "chart-sweep-deviation") == [
        "sketch + blocks", "sketch + blocks: relative to the weights", "blocks only", "blocks only: relative to the weights"]
    assert _chart_names(response, "chart-sweep-bytes") == [
        "sketch + blocks: sketches", "sketch + blocks: exact blocks", "sketch + blocks: read from storage",
        "blocks only: exact blocks", "blocks only: read from storage"]
    points = response.context["points"]
    assert [(p["budget"], p["mode_label"]) for p in points] == [
        ("0.25", "sketch + blocks"), ("0.25", "blocks only"), ("1", "sketch + blocks"), ("1", "blocks only")]
    assert "<th>Mode</th>" in html and "<th class=\"num\">In sketches</th>" in html
    assert html.count('data-mode="sketch"') == 2 and html.count('data-mode="blocks"') == 2
    sketched = points[0]
    assert sketched["sketch_bytes"] > 0 and f"of rank ≤ {sketched['sketch_rank']}" in html
    assert "same plan as sketch + blocks: merged once" in html  # the full budget's blocks-only row
    sketch_query = parse_qs(urlsplit(sketched["merge_url"]).query)
    blocks_query = parse_qs(urlsplit(points[1]["merge_url"]).query)
    assert sketch_query["sketch_rank"] == [str(sketched["sketch_rank"])] and blocks_query["sketch_rank"] == ["0"]
    assert sketch_query["budget"] == blocks_query["budget"] == ["0.25"]
    form = carol_client.get(points[1]["merge_url"]).context["form"]
    assert form["sketch_rank"].value() == "0" and form["budget"].value() == "0.25"


def test_a_sweep_from_before_sketches_shows_as_blocks_only(carol_client, registered_lm):
    carol_client.post(reverse("evaluation:sweep_new"), _merge_post(registered_lm, sweep_budgets="0.5"))
    sweep = SweepJob.objects.get()
    sweep.points = [{"budget": b, "full_expert_bytes": 1000, "planned_expert_bytes": n, "certificate": None,
                     "deviation": {"update_relative": d, "weight_relative": d / 10}}
                    for b, n, d in (("0.5", 500, 0.2), ("1", 1000, 0.0))]  # no "mode": before sketches
    sweep.save(update_fields=["points"])
    response = carol_client.get(reverse("evaluation:sweep", args=[sweep.pk]))
    html = _text(response)
    assert response.status_code == 200 and html.count('data-mode="blocks"') == 2 and "<th>Mode</th>" not in html
    assert _chart_names(response, "chart-sweep-deviation") == ["‖Δ_A − Δ_full‖ / ‖Δ_full‖", "relative to the weights"]
    assert _chart_names(response, "chart-sweep-bytes") == ["planned expert bytes"]
    query = parse_qs(urlsplit(response.context["points"][0]["merge_url"]).query)
    assert query["budget"] == ["0.5"] and query["sketch_rank"] == ["0"]


def test_start_this_merge_keeps_every_task_the_sweep_was_scored_on(carol_client, registered_lm, reverse_task,
                                                                  task_file, alice, acme):
    from mergehub.evaluation.task_registry import register_task

    other = register_task(team=acme, user=alice, name="reverse-again", path=str(task_file))
    data = _merge_post(registered_lm, sweep_budgets="0.5")
    data = {**data, "evaluate_tasks": [str(reverse_task.pk), str(other.pk)]}
    carol_client.post(reverse("evaluation:sweep_new"), data)  # queued only: the point's link is what matters
    sweep = SweepJob.objects.get()
    sweep.points = [{"budget": "0.5", "full_expert_bytes": 1, "planned_expert_bytes": 1}]
    sweep.save(update_fields=["points"])
    point = carol_client.get(reverse("evaluation:sweep", args=[sweep.pk])).context["points"][0]
    form = carol_client.get(point["merge_url"]).context["form"]
    assert sorted(form["evaluate_tasks"].value()) == sorted([str(reverse_task.pk), str(other.pk)])
    assert form["budget"].value() == "0.5"


def test_the_sweep_list_and_live_part(carol_client, finished_sweep):
    html = _text(carol_client.get(reverse("evaluation:sweeps")))
    assert 'id="sweep-table"' in html and reverse("evaluation:sweep", args=[finished_sweep.pk]) in html
    assert "0.1, 0.25, 1" in html
    live = carol_client.get(reverse("evaluation:sweep_live", args=[finished_sweep.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 204 and live["HX-Refresh"] == "true"


def test_a_sweep_with_scores_draws_the_score_chart(carol_client, registered_lm, reverse_task, alice, acme,
                                                   run_on_commit):
    with run_on_commit():
        sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.25", tasks=[reverse_task],
                                    **{k: v for k, v in lm_merge_inputs(registered_lm).items() if k != "budget"})
    html = _text(carol_client.get(reverse("evaluation:sweep", args=[sweep.pk])))
    assert 'id="chart-sweep-scores"' in html and '<th class="num">reverse</th>' in html
    assert "lm-base <span class=\"small\">(base)</span>" in html


def test_cancel_and_retry_a_sweep(carol_client, registered_lm, alice, acme):
    inputs = {k: v for k, v in lm_merge_inputs(registered_lm).items() if k != "budget"}
    sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.5", **inputs)
    live = carol_client.get(reverse("evaluation:sweep_live", args=[sweep.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200 and 'id="sweep-status"' in _text(live)
    page = _text(carol_client.get(reverse("evaluation:sweep", args=[sweep.pk])))
    assert reverse("evaluation:sweep_cancel", args=[sweep.pk]) in page
    carol_client.post(reverse("evaluation:sweep_cancel", args=[sweep.pk]))
    sweep.refresh_from_db()
    assert sweep.status == "cancelled"
    response = carol_client.post(reverse("evaluation:sweep_retry", args=[sweep.pk]))
    retry = SweepJob.objects.get(retry_of=sweep)
    assert response["Location"] == reverse("evaluation:sweep", args=[retry.pk])


# --- another team -------------------------------------------------------------------------------

def test_no_page_shows_another_teams_tasks(mallory_client, evaluated_run, registered_lm, task_file, alice, acme):
    from mergehub.evaluation.task_registry import register_task

    run, job = evaluated_run["run"], evaluated_run["job"]
    secret = register_task(team=acme, user=alice, name="acme-secret-task", path=str(task_file))
    sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.5", tasks=[secret],
                                **{k: v for k, v in lm_merge_inputs(registered_lm).items() if k != "budget"})
    for name in ("evaluation:tasks", "evaluation:sweeps", "runs:new", "dashboard:dashboard"):
        response = mallory_client.get(reverse(name))
        assert response.status_code == 200 and "acme-secret-task" not in _text(response), name
        assert "<strong>reverse</strong>" not in _text(response), name
    for name, pk in (("evaluation:detail", job.pk), ("evaluation:live", job.pk), ("evaluation:sweep", sweep.pk),
                     ("evaluation:sweep_live", sweep.pk), ("runs:detail", run.pk)):
        assert mallory_client.get(reverse(name, args=[pk])).status_code == 404, name
    response = mallory_client.post(reverse("evaluation:evaluate_run", args=[run.pk]), {"tasks": [secret.pk]})
    assert response.status_code == 404 and EvaluationJob.objects.count() == 1
    response = mallory_client.post(reverse("evaluation:task_delete", args=[secret.pk]))
    assert response.status_code == 404 and EvalTask.objects.count() == 2
