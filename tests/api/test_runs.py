"""/api/v1/runs/: create from a mergekit config, list with filters and pages, detail, cancel,
retry, the YAML export (and its round trip to a bit-identical merge), Idempotency-Key, and who
may do what."""

from __future__ import annotations

import pytest

from mergehub.evaluation.models import EvalResult, EvalTask, EvaluationJob
from mergehub.runs.models import MergeRun
from mergehub.runs.yaml_config import config_yaml

pytestmark = pytest.mark.django_db

RUNS = "/api/v1/runs/"
NOT_YOURS = "is not one of your team's checkpoints (by name, id, path or Hub id)"
TIES = ("merge_method: ties\nbase_model: base\nmodels:\n"
        "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
        "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")


def post_run(client, config=TIES, **body):
    return client.post(RUNS, {"config": config, "budget": "0.5", **body}, format="json")


# --- create -----------------------------------------------------------------------------------

def test_create_queues_a_run_from_yaml_text(registered_family, writer, carol):
    response = post_run(writer, name="from the api", seed=3)
    assert response.status_code == 201, response.json()
    body = response.json()
    run = MergeRun.objects.get()
    assert body == {"id": run.pk, "status": "queued", "url": f"http://testserver{RUNS}{run.pk}/"}
    assert response["Location"] == body["url"]
    assert (run.name, run.author, run.method, run.budget, run.seed) == ("from the api", carol, "ties", "0.5", 3)
    assert run.base == registered_family["base"]
    assert set(run.experts.all()) == set(registered_family["experts"])
    assert run.plan["planned_expert_bytes"] > 0


def test_create_takes_the_config_as_an_object_too(registered_family, writer):
    config = {"merge_method": "ties", "base_model": "base",
              "models": [{"model": "expert-1", "parameters": {"weight": 1.0, "density": 0.7}}],
              "parameters": {"lambda": 0.9}}
    response = post_run(writer, config=config, measure_deviation=True)
    assert response.status_code == 201, response.json()
    run = MergeRun.objects.get()
    assert run.measure_deviation and run.config["parameters"] == {"lambda": 0.9}


def test_create_refuses_what_does_not_check_out(registered_family, family, writer, mallory, rival):
    from mergehub.registry.services import register_checkpoint

    register_checkpoint(team=rival, user=mallory, name="rival-base", role="base", family_name="rival",
                        local_path=str(family["base"]))
    cases = [
        (TIES.replace("expert-2", "nope"), {}, "config", f"models[1].model: 'nope' {NOT_YOURS}"),
        (TIES.replace("base_model: base", "base_model: rival-base"), {}, "config",
         f"base_model: 'rival-base' {NOT_YOURS}"),
        ("merge_method: ties\nmodels: [\n", {}, "config", "invalid YAML at line 3"),
        (TIES + "slices: []\n", {}, "config", "slices are not supported yet"),
        (TIES, {"budget": "lots"}, "budget", "lots"),
        (TIES, {"evaluate_tasks": ["no-such-task"]}, "evaluate_tasks", "'no-such-task' is not one of your team's"),
        (TIES, {"block_size": "big"}, "block_size", "is not a size"),
        (42, {}, "config", "YAML text or as a JSON object"),
    ]
    for config, extra, field, expected in cases:
        response = post_run(writer, config=config, **extra)
        assert response.status_code == 400, (config, extra)
        assert expected in " ".join(response.json()[field]), response.json()
    assert not MergeRun.objects.exists()


def test_create_with_evaluate_tasks_by_name_or_id(registered_family, writer, acme):
    task = EvalTask.objects.create(team=acme, name="arith", kind="generate", metric="exact_match",
                                   settings_key="k", content_hash="h", source="local", path="/x.jsonl")
    for ref in ("arith", task.pk):
        assert post_run(writer, evaluate_tasks=[ref]).status_code == 201
    assert [r.evaluate_task_ids for r in MergeRun.objects.all()] == [[task.pk], [task.pk]]


# --- idempotency ------------------------------------------------------------------------------

def test_the_same_idempotency_key_gets_the_first_run_back(registered_family, writer, carol, acme, alice, make_token,
                                                          api):
    first = writer.post(RUNS, {"config": TIES, "budget": "0.5"}, format="json", HTTP_IDEMPOTENCY_KEY="req-1")
    again = writer.post(RUNS, {"config": TIES, "budget": "0.5"}, format="json", HTTP_IDEMPOTENCY_KEY="req-1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert MergeRun.objects.count() == 1
    assert MergeRun.objects.get().idempotency_key == "req-1"
    # another key, or another user with the same key, is another request
    assert writer.post(RUNS, {"config": TIES, "budget": "0.5"}, format="json",
                       HTTP_IDEMPOTENCY_KEY="req-2").status_code == 201
    admin = api(make_token(alice, acme, write=True)[1])
    assert admin.post(RUNS, {"config": TIES, "budget": "0.5"}, format="json",
                      HTTP_IDEMPOTENCY_KEY="req-1").status_code == 201
    assert MergeRun.objects.count() == 3
    # no key: every request queues a run
    assert post_run(writer).status_code == 201 and post_run(writer).status_code == 201
    assert MergeRun.objects.count() == 5


def test_a_key_sent_twice_at_once_still_makes_one_run(registered_family, carol, acme, monkeypatch):
    """The second request passed the look-up before the first one's row was written: the unique
    constraint refuses its row and it answers with the first run."""
    from mergehub.runs import selectors, services
    from tests.pages.conftest import ties_inputs

    first, created = services.create_run_once(user=carol, team=acme, idempotency_key="race",
                                              **ties_inputs(registered_family))
    assert created
    real = selectors.run_for_idempotency_key
    calls = []

    def late_lookup(**kwargs):
        calls.append(kwargs)
        return None if len(calls) == 1 else real(**kwargs)

    monkeypatch.setattr(services, "run_for_idempotency_key", late_lookup)
    second, created = services.create_run_once(user=carol, team=acme, idempotency_key="race",
                                               **ties_inputs(registered_family))
    assert (second, created) == (first, False) and MergeRun.objects.count() == 1


def test_a_bad_idempotency_key_is_refused(registered_family, writer):
    response = writer.post(RUNS, {"config": TIES, "budget": "0.5"}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 201)
    assert response.status_code == 400 and "idempotency_key" in response.json()


# --- read -------------------------------------------------------------------------------------

def test_list_filters_and_pages(registered_family, writer, reader, acme):
    for _ in range(2):
        post_run(writer)
    cancelled = MergeRun.objects.first()
    writer.post(f"{RUNS}{cancelled.pk}/cancel/")
    body = reader.get(RUNS).json()
    assert set(body) == {"count", "next", "previous", "results"} and body["count"] == 2
    row = body["results"][0]
    assert row["method"] == "ties" and row["author"] == "carol" and row["url"].endswith(f"{RUNS}{row['id']}/")
    assert "plan" not in row and "manifest" not in row
    assert [r["id"] for r in reader.get(RUNS, {"status": "cancelled"}).json()["results"]] == [cancelled.pk]
    assert reader.get(RUNS, {"method": "ties"}).json()["count"] == 2
    assert reader.get(RUNS, {"method": "linear"}).json()["count"] == 0
    assert reader.get(RUNS, {"status": "sideways"}).status_code == 400

    MergeRun.objects.bulk_create([MergeRun(team=acme, name=f"r{i}", method="ties", budget="1") for i in range(50)])
    first = reader.get(RUNS).json()
    assert first["count"] == 52 and len(first["results"]) == 50 and first["next"].endswith(f"{RUNS}?page=2")
    assert len(reader.get(first["next"]).json()["results"]) == 2


def test_detail_shows_plan_metrics_manifest_and_scores(registered_family, writer, reader, acme, run_on_commit):
    with run_on_commit():
        run_id = post_run(writer, measure_deviation=True).json()["id"]
    run = MergeRun.objects.get(pk=run_id)
    assert run.status == "succeeded", run.error
    body = reader.get(f"{RUNS}{run_id}/").json()
    assert body["status"] == "succeeded" and body["progress"] == 1.0 and body["error"] == ""
    assert body["plan"]["plan_digest"] == run.plan["plan_digest"]
    assert body["metrics"]["deviation"] and body["manifest"]["outputs"]["files"]
    assert body["checkpoints"] == {"base": {"id": run.base_id, "name": "base"},
                                   "experts": [{"id": e.pk, "name": e.name} for e in registered_family["experts"]]}
    assert body["config"]["merge_method"] == "ties" and "checkpoint_ids" not in body["config"]
    assert body["config_yaml_url"] == f"http://testserver{RUNS}{run_id}/config.yaml"
    assert body["evaluation"] is None

    # once evaluated, the scores show
    task = EvalTask.objects.create(team=acme, name="arith", kind="generate", metric="exact_match",
                                   settings_key="k", content_hash="h", source="local", path="/x.jsonl")
    job = EvaluationJob.objects.create(team=acme, run=run, status="succeeded", with_references=True,
                                       subjects=[{"label": f"run #{run.pk}", "role": "merge", "model_hash": "m"},
                                                 {"label": "base", "role": "base", "model_hash": "b"}])
    job.tasks.set([task])
    for model_hash, score in (("m", 0.75), ("b", 0.5)):
        EvalResult.objects.create(team=acme, model_hash=model_hash, task=task, task_name="arith", task_hash="h",
                                  settings_key="k", metric="exact_match", n=4, score=score, ci_low=0, ci_high=1)
    evaluation = reader.get(f"{RUNS}{run_id}/").json()["evaluation"]
    assert evaluation["evaluation"]["id"] == job.pk and evaluation["tasks"] == ["arith"]
    assert [(m["role"], m["scores"][0]["score"]) for m in evaluation["models"]] == [("merge", 0.75), ("base", 0.5)]


def test_another_teams_run_is_404_like_a_missing_one(registered_family, writer, outsider):
    run_id = post_run(writer).json()["id"]
    for suffix, method in (("", "get"), ("config.yaml", "get"), ("cancel/", "post"), ("retry/", "post")):
        theirs = getattr(outsider, method)(f"{RUNS}{run_id}/{suffix}")
        missing = getattr(outsider, method)(f"{RUNS}{10**6}/{suffix}")
        assert theirs.status_code == missing.status_code == 404, suffix
        assert theirs.content == missing.content
    assert outsider.get(RUNS).json()["count"] == 0
    assert MergeRun.objects.get(pk=run_id).status == "queued"


def test_read_only_tokens_and_viewers_cannot_write(registered_family, writer, reader, bob, acme, make_token, api):
    run_id = post_run(writer).json()["id"]
    viewer_with_write_token = api(make_token(bob, acme, write=True)[1])
    for client in (reader, viewer_with_write_token):
        assert post_run(client).status_code == 403
        assert client.post(f"{RUNS}{run_id}/cancel/").status_code == 403
        assert client.post(f"{RUNS}{run_id}/retry/").status_code == 403
        assert client.get(f"{RUNS}{run_id}/").status_code == 200
    assert MergeRun.objects.count() == 1 and MergeRun.objects.get().status == "queued"


def test_no_token_no_runs(registered_family, writer, api):
    run_id = post_run(writer).json()["id"]
    assert api().get(RUNS).status_code == 401
    assert api().get(f"{RUNS}{run_id}/config.yaml").status_code == 401


# --- cancel, retry ----------------------------------------------------------------------------

def test_cancel_then_retry(registered_family, writer):
    run_id = post_run(writer).json()["id"]
    cancelled = writer.post(f"{RUNS}{run_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    retried = writer.post(f"{RUNS}{run_id}/retry/")
    assert retried.status_code == 201
    new = MergeRun.objects.get(pk=retried.json()["id"])
    assert new.retry_of_id == run_id and new.status == "queued"
    assert retried.json()["url"].endswith(f"{RUNS}{new.pk}/")
    # a queued run cannot be retried
    again = writer.post(f"{RUNS}{new.pk}/retry/")
    assert again.status_code == 400 and "still queued" in again.json()["detail"]


# --- YAML out and back in ---------------------------------------------------------------------

def test_config_yaml_download(registered_family, writer, reader):
    run_id = post_run(writer).json()["id"]
    response = reader.get(f"{RUNS}{run_id}/config.yaml")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/yaml")
    assert response["Content-Disposition"] == f'attachment; filename="run-{run_id}.yaml"'
    assert response.content.decode() == config_yaml(MergeRun.objects.get(pk=run_id))


def test_the_exported_yaml_merges_bit_identically(registered_family, writer, reader, run_on_commit):
    """A DARE run (random, so the seed matters) at a partial budget, exported and submitted again
    with nothing else: the section's budget, seed and block size reproduce it byte for byte."""
    dare = TIES.replace("ties", "dare_ties")
    with run_on_commit():
        first_id = post_run(writer, config=dare, budget="0.5", seed=11).json()["id"]
    exported = reader.get(f"{RUNS}{first_id}/config.yaml").content.decode()
    with run_on_commit():
        response = writer.post(RUNS, {"config": exported}, format="json")
    assert response.status_code == 201, response.json()
    first, second = MergeRun.objects.get(pk=first_id), MergeRun.objects.get(pk=response.json()["id"])
    assert first.status == second.status == "succeeded", (first.error, second.error)
    assert (second.budget, second.seed, second.block_size) == ("0.5", 11, first.block_size)
    assert second.plan["plan_digest"] == first.plan["plan_digest"]
    assert second.manifest["outputs"]["files"] == first.manifest["outputs"]["files"]
    assert second.output_path != first.output_path
