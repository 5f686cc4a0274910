"""/api/v1/tasks/, /api/v1/evaluations/ and /api/v1/sweeps/: register and read tasks, queue,
read, cancel and retry evaluations and sweeps; other teams' objects are 404, read-only tokens
cannot write."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mergehub.evaluation.models import EvalResult, EvalTask, EvaluationJob, SweepJob
from mergehub.runs.models import MergeRun

pytestmark = pytest.mark.django_db

TASKS, EVALUATIONS, SWEEPS = "/api/v1/tasks/", "/api/v1/evaluations/", "/api/v1/sweeps/"
TIES = ("merge_method: ties\nbase_model: base\nmodels:\n"
        "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
        "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")
EXAMPLES = "".join(json.dumps({"prompt": f"{a}+{a}=", "target": str(2 * a)}) + "\n" for a in range(4))


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "arith.jsonl"
    path.write_text(EXAMPLES)
    return path


@pytest.fixture
def task(writer, task_file):
    response = writer.post(TASKS, {"name": "arith", "path": str(task_file)}, format="json")
    assert response.status_code == 201, response.json()
    return EvalTask.objects.get(pk=response.json()["id"])


def assert_404_like_missing(client, method: str, url: str, missing: str, body=None):
    theirs, nothing = (getattr(client, method)(u, body, format="json") for u in (url, missing))
    assert theirs.status_code == nothing.status_code == 404, url
    assert theirs.content == nothing.content


# --- tasks ------------------------------------------------------------------------------------

def test_register_a_task_by_path_and_read_it(task, reader, carol):
    assert (task.name, task.kind, task.n_examples, task.added_by) == ("arith", "generate", 4, carol)
    assert task.source == "local"
    body = reader.get(TASKS).json()
    assert body["count"] == 1 and body["results"][0]["name"] == "arith"
    detail = reader.get(f"{TASKS}{task.pk}/").json()
    assert detail["id"] == task.pk and detail["metric"] == task.metric and detail["source"] == "local"
    assert detail["url"] == f"http://testserver{TASKS}{task.pk}/"


def test_register_a_task_by_upload(writer, acme):
    upload = SimpleUploadedFile("mine.jsonl", EXAMPLES.encode())
    response = writer.post(TASKS, {"name": "uploaded", "upload": upload, "max_new_tokens": "8"}, format="multipart")
    assert response.status_code == 201, response.json()
    task = EvalTask.objects.get(team=acme, name="uploaded")
    assert task.source == "upload" and task.settings["max_new_tokens"] == 8


def test_task_registration_errors_are_the_forms(task, writer, tmp_path):
    again = writer.post(TASKS, {"name": "arith", "path": str(tmp_path / "arith.jsonl")}, format="json")
    assert "already has a task named" in " ".join(again.json()["name"])
    assert writer.post(TASKS, {"path": "/etc/passwd"}, format="json").json()["name"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    refused = writer.post(TASKS, {"name": "broken", "path": str(broken)}, format="json")
    assert refused.status_code == 400 and "line 1" in " ".join(refused.json()["path"])


def test_tasks_of_other_teams_and_read_only_tokens(task, reader, outsider, task_file):
    assert_404_like_missing(outsider, "get", f"{TASKS}{task.pk}/", f"{TASKS}{10**6}/")
    assert outsider.get(TASKS).json()["count"] == 0
    assert reader.post(TASKS, {"name": "again", "path": str(task_file)}, format="json").status_code == 403
    assert EvalTask.objects.count() == 1


# --- evaluations ------------------------------------------------------------------------------

def test_evaluate_a_checkpoint_then_cancel_and_retry(registered_family, task, writer, reader):
    base = registered_family["base"]
    response = writer.post(EVALUATIONS, {"checkpoint": base.pk, "tasks": ["arith"]}, format="json")
    assert response.status_code == 201, response.json()
    job = EvaluationJob.objects.get()
    assert response.json() == {"id": job.pk, "status": "queued", "url": f"http://testserver{EVALUATIONS}{job.pk}/"}
    assert job.checkpoint == base and list(job.tasks.all()) == [task]

    listed = reader.get(EVALUATIONS).json()
    assert listed["count"] == 1 and listed["results"][0]["checkpoint"] == base.pk
    detail = reader.get(f"{EVALUATIONS}{job.pk}/").json()
    assert detail["tasks"] == ["arith"] and detail["scores"] == [] and detail["status"] == "queued"

    # scores show as the job stores them
    EvaluationJob.objects.filter(pk=job.pk).update(
        subjects=[{"label": "base", "role": "checkpoint", "checkpoint_id": base.pk, "model_hash": "b"}])
    EvalResult.objects.create(team=task.team, model_hash="b", task=task, task_name="arith", task_hash=task.content_hash,
                              settings_key=task.settings_key, metric="exact_match", n=4, score=0.5, ci_low=0.1,
                              ci_high=0.9, samples=[{"prompt": "1+1=", "output": "2", "target": "2", "correct": True}])
    scores = reader.get(f"{EVALUATIONS}{job.pk}/").json()["scores"]
    assert scores == [{"label": "base", "role": "checkpoint", "scores": [
        {"task": "arith", "metric": "exact_match", "higher_is_better": True, "score": 0.5, "ci_low": 0.1,
         "ci_high": 0.9, "n": 4, "seconds": 0.0, "device": ""}]}]

    cancelled = writer.post(f"{EVALUATIONS}{job.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    retried = writer.post(f"{EVALUATIONS}{job.pk}/retry/")
    assert retried.status_code == 201
    assert EvaluationJob.objects.get(pk=retried.json()["id"]).retry_of_id == job.pk


def test_evaluation_input_errors(registered_family, task, writer, alice, acme):
    from mergehub.runs.services import create_run
    from tests.pages.conftest import ties_inputs

    base = registered_family["base"]
    queued_run = create_run(user=alice, team=acme, **ties_inputs(registered_family))
    cases = [
        ({"tasks": ["arith"]}, "non_field_errors", "either run or checkpoint"),
        ({"run": queued_run.pk, "checkpoint": base.pk, "tasks": ["arith"]}, "non_field_errors", "either run"),
        ({"run": queued_run.pk, "tasks": ["arith"]}, "detail", "only a merged model can be evaluated"),
        ({"checkpoint": base.pk, "tasks": []}, "tasks", "Choose at least one task"),
        ({"checkpoint": base.pk, "tasks": ["nope"]}, "tasks", "'nope' is not one of your team's evaluation tasks"),
    ]
    for body, field, expected in cases:
        response = writer.post(EVALUATIONS, body, format="json")
        assert response.status_code == 400, body
        errors = response.json()[field]
        assert expected in (errors if isinstance(errors, str) else " ".join(errors)), response.json()
    assert not EvaluationJob.objects.exists()


def test_evaluations_of_other_teams_and_read_only_tokens(registered_family, task, writer, reader, outsider):
    base = registered_family["base"]
    job_id = writer.post(EVALUATIONS, {"checkpoint": base.pk, "tasks": [task.pk]}, format="json").json()["id"]
    for suffix, method in (("", "get"), ("cancel/", "post"), ("retry/", "post")):
        assert_404_like_missing(outsider, method, f"{EVALUATIONS}{job_id}/{suffix}", f"{EVALUATIONS}{10**6}/{suffix}")
    # acme's checkpoint is not hers to evaluate: 404 as for a checkpoint that does not exist
    assert_404_like_missing(outsider, "post", EVALUATIONS, EVALUATIONS, {"checkpoint": base.pk, "tasks": ["x"]})
    assert outsider.get(EVALUATIONS).json()["count"] == 0
    assert reader.post(EVALUATIONS, {"checkpoint": base.pk, "tasks": [task.pk]}, format="json").status_code == 403
    assert reader.post(f"{EVALUATIONS}{job_id}/cancel/").status_code == 403
    assert EvaluationJob.objects.count() == 1 and EvaluationJob.objects.get().status == "queued"


# --- sweeps -----------------------------------------------------------------------------------

def test_sweep_create_read_cancel_retry(registered_family, task, writer, reader):
    response = writer.post(SWEEPS, {"config": TIES, "budgets": "0.25, 0.5", "tasks": ["arith"], "seed": 2},
                           format="json")
    assert response.status_code == 201, response.json()
    sweep = SweepJob.objects.get()
    assert response.json()["url"] == f"http://testserver{SWEEPS}{sweep.pk}/"
    assert sweep.budgets == ["0.25", "0.5", "1"] and sweep.seed == 2 and list(sweep.tasks.all()) == [task]
    assert set(sweep.experts.all()) == set(registered_family["experts"])
    # the sweep page's "start this merge" links fill the merge form from it
    e1 = registered_family["experts"][0]
    assert sweep.form_data["method"] == ["ties"] and sweep.form_data[f"expert_{e1.pk}__weight"] == ["1.0"]

    listed = reader.get(SWEEPS).json()
    assert listed["count"] == 1 and listed["results"][0]["budgets"] == ["0.25", "0.5", "1"]
    detail = reader.get(f"{SWEEPS}{sweep.pk}/").json()
    assert detail["tasks"] == ["arith"] and detail["points"] == [] and detail["method"] == "ties"

    assert writer.post(f"{SWEEPS}{sweep.pk}/cancel/").json()["status"] == "cancelled"
    retried = writer.post(f"{SWEEPS}{sweep.pk}/retry/")
    assert retried.status_code == 201 and SweepJob.objects.get(pk=retried.json()["id"]).retry_of_id == sweep.pk


def test_sweep_budgets_as_a_list_and_errors(registered_family, writer):
    assert writer.post(SWEEPS, {"config": TIES, "budgets": [0.1, "1"]}, format="json").status_code == 201
    assert SweepJob.objects.get().budgets == ["0.1", "1"]
    bad = writer.post(SWEEPS, {"config": TIES, "budgets": "0.1, lots"}, format="json")
    assert bad.status_code == 400 and "lots" in " ".join(bad.json()["budgets"])
    unknown = writer.post(SWEEPS, {"config": TIES.replace("expert-2", "nope"), "budgets": "0.5"}, format="json")
    assert unknown.status_code == 400 and "models[1].model: 'nope'" in " ".join(unknown.json()["config"])
    assert SweepJob.objects.count() == 1 and not MergeRun.objects.exists()


def test_sweeps_of_other_teams_and_read_only_tokens(registered_family, writer, reader, outsider):
    sweep_id = writer.post(SWEEPS, {"config": TIES, "budgets": "0.5"}, format="json").json()["id"]
    for suffix, method in (("", "get"), ("cancel/", "post"), ("retry/", "post")):
        assert_404_like_missing(outsider, method, f"{SWEEPS}{sweep_id}/{suffix}", f"{SWEEPS}{10**6}/{suffix}")
    assert outsider.get(SWEEPS).json()["count"] == 0
    assert reader.post(SWEEPS, {"config": TIES, "budgets": "0.5"}, format="json").status_code == 403
    assert reader.post(f"{SWEEPS}{sweep_id}/cancel/").status_code == 403
    assert SweepJob.objects.count() == 1 and SweepJob.objects.get().status == "queued"
