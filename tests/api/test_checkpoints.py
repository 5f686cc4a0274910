"""GET/POST /api/v1/checkpoints/, GET checkpoints/{id}/, POST checkpoints/{id}/reindex/."""

from __future__ import annotations

import pytest

from mergehub.registry.models import Checkpoint, IndexJob

pytestmark = pytest.mark.django_db

CHECKPOINTS = "/api/v1/checkpoints/"


@pytest.fixture
def reader(alice, acme, make_token, api):
    return api(make_token(alice, acme)[1])


@pytest.fixture
def writer(carol, acme, make_token, api):
    return api(make_token(carol, acme, write=True)[1])


def test_list_is_paginated_and_filtered(registered_family, reader):
    body = reader.get(CHECKPOINTS).json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 3 and body["next"] is None and body["previous"] is None
    base = body["results"][0]
    assert base["name"] == "base" and base["role"] == "base" and base["team"] == "acme"
    assert base["family"] == "tiny-llama" and base["index_status"] == "ready" and base["added_by"] == "alice"
    assert base["size_bytes"] > 0 and base["tensor_count"] > 0 and base["source"] == "local"
    assert "file_hashes" not in base  # the list leaves the big columns out
    experts = reader.get(CHECKPOINTS, {"role": "expert"}).json()["results"]
    assert [c["name"] for c in experts] == ["expert-1", "expert-2"]
    assert reader.get(CHECKPOINTS, {"status": "failed"}).json()["count"] == 0
    response = reader.get(CHECKPOINTS, {"status": "done"})
    assert response.status_code == 400
    assert response.json() == {"status": ["Choose one of pending, indexing, ready, failed."]}


def test_list_pages_hold_50(acme, reader):
    Checkpoint.objects.bulk_create([Checkpoint(team=acme, name=f"c{i:03d}", role="base") for i in range(51)])
    first = reader.get(CHECKPOINTS).json()
    assert first["count"] == 51 and len(first["results"]) == 50
    assert first["next"].endswith("/api/v1/checkpoints/?page=2")
    second = reader.get(first["next"]).json()
    assert [c["name"] for c in second["results"]] == ["c050"] and second["previous"]


def test_detail(registered_family, reader):
    expert = registered_family["experts"][0]
    body = reader.get(f"{CHECKPOINTS}{expert.pk}/").json()
    assert body["id"] == expert.pk and body["name"] == "expert-1" and body["role"] == "expert"
    assert body["file_hashes"] == expert.file_hashes and len(body["file_hashes"]) >= 1
    assert body["indexed_at"] is not None and body["path"] == expert.path


def test_another_teams_checkpoint_is_404_like_a_missing_one(registered_family, mallory, rival, make_token, api):
    client = api(make_token(mallory, rival, write=True)[1])
    expert = registered_family["experts"][0]
    for suffix in ("", "reindex/"):
        method = client.post if suffix else client.get
        theirs = method(f"{CHECKPOINTS}{expert.pk}/{suffix}")
        missing = method(f"{CHECKPOINTS}{10**6}/{suffix}")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.content == missing.content == b'{"detail":"No such checkpoint."}'
    assert client.get(CHECKPOINTS).json()["count"] == 0
    assert not IndexJob.objects.filter(checkpoint=expert).exclude(status="succeeded").exists()


def test_register_a_base_and_an_expert(family, acme, writer, run_on_commit):
    response = writer.post(CHECKPOINTS, {"name": "base", "role": "base", "family_name": "fam",
                                         "local_path": str(family["base"])})
    assert response.status_code == 201, response.json()
    base = response.json()
    assert base["index_status"] == "ready" and base["family"] == "fam" and base["added_by"] == "carol"
    with run_on_commit():
        response = writer.post(CHECKPOINTS, {"name": "e1", "role": "expert", "local_path": str(family["experts"][0])})
    assert response.status_code == 201, response.json()
    expert = response.json()
    assert expert["family"] == "fam" and expert["index_status"] == "pending"  # as registered; then indexed
    assert Checkpoint.objects.get(pk=expert["id"]).index_status == "ready"
    assert writer.get(f"{CHECKPOINTS}{expert['id']}/").json()["index_status"] == "ready"


def _form_errors(client, data: dict) -> dict:
    """The register page's errors for the same input (with its source radio set as the API infers it)."""
    source = "hf" if data.get("hf_repo_id") and not data.get("local_path") else "local"
    response = client.post("/checkpoints/new/", {**data, "source": source})
    assert response.status_code == 200
    return {("non_field_errors" if k == "__all__" else k): list(v) for k, v in response.context["form"].errors.items()}


@pytest.mark.parametrize("case", ["empty", "bad role", "outside roots", "taken name", "no family", "bad repo",
                                  "both sources", "long name"])
def test_register_errors_are_the_forms(case, registered_family, family, tmp_path, writer, carol_client):
    data = {
        "empty": {},
        "bad role": {"name": "x", "role": "boss", "local_path": str(family["base"])},
        "outside roots": {"name": "x", "role": "base", "local_path": "/etc"},
        "taken name": {"name": "base", "role": "base", "local_path": str(family["base"])},
        "no family": {"name": "x", "role": "expert", "family_name": "nope",
                      "local_path": str(family["experts"][0])},
        "bad repo": {"name": "x", "role": "base", "hf_repo_id": "not a repo"},
        "both sources": {"name": "x", "role": "base", "local_path": str(family["base"]), "hf_repo_id": "a/b"},
        "long name": {"name": "x" * 201, "role": "base", "local_path": str(family["base"])},
    }[case]
    count = Checkpoint.objects.count()
    response = writer.post(CHECKPOINTS, data)
    assert response.status_code == 400
    errors = response.json()
    assert errors and all(isinstance(v, list) and v for v in errors.values()), errors
    if case == "both sources":  # the page's radio picks one source; the API refuses both, as the service does
        assert errors == {"local_path": ["Give either a local path or a Hugging Face repo id (not both)."]}
    else:
        assert errors == _form_errors(carol_client, data)
    assert Checkpoint.objects.count() == count


def test_register_refuses_non_objects_and_nested_values(writer):
    assert writer.post(CHECKPOINTS, ["a"]).json() == {"non_field_errors": ["Send a JSON object."]}
    assert writer.post(CHECKPOINTS, {"name": ["a"], "role": "base"}).json() == {
        "name": ["Enter text, not a list or an object."]}


def test_reindex_queues_an_index_job(registered_family, writer, django_capture_on_commit_callbacks):
    expert = registered_family["experts"][1]
    jobs = IndexJob.objects.filter(checkpoint=expert).count()
    with django_capture_on_commit_callbacks() as queued:
        response = writer.post(f"{CHECKPOINTS}{expert.pk}/reindex/")
    assert response.status_code == 202
    assert response.json()["index_status"] == "pending" and response.json()["id"] == expert.pk
    assert IndexJob.objects.filter(checkpoint=expert).count() == jobs + 1 and len(queued) == 1
    response = writer.post(f"{CHECKPOINTS}{expert.pk}/reindex/")  # its job is still queued
    assert response.status_code == 400
    assert "is being indexed right now" in response.json()["detail"]


def test_get_on_reindex_is_405(registered_family, reader):
    assert reader.get(f"{CHECKPOINTS}{registered_family['base'].pk}/reindex/").status_code == 405
