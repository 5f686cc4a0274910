"""Pushing a run to the Hub, end to end through the job seam (django-q2 in sync mode) with
huggingface_hub's HfApi replaced by a recorder (conftest.FakeHub) or pointed at a port where
nothing listens: never the network. Whatever the outcome, the typed token is erased when the job
ends, and the run and its output are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergehub.audit.models import AuditEvent
from mergehub.publishing import services
from mergehub.publishing.models import HubPush
from tests.publishing.conftest import FakeHub, output_state, run_state

pytestmark = pytest.mark.django_db


def _push(run, user, run_on_commit, **kwargs) -> HubPush:
    with run_on_commit():
        push = services.queue_push(user=user, run=run, **{"repo_id": "acme/merged", **kwargs})
    push.refresh_from_db()
    return push


def test_a_push_uploads_the_output_and_the_card(merged_run, carol, fake_hub, run_on_commit):
    before, row = output_state(merged_run), run_state(merged_run)
    push = _push(merged_run, carol, run_on_commit, token="hf_typedsecret", private=True)
    assert push.status == "succeeded", push.error
    # the client: the configured endpoint, the typed token
    assert fake_hub.clients == [{"endpoint": "http://hub.invalid", "token": "hf_typedsecret",
                                 "library_name": "mergehub", "library_version": __import__("mergehub").__version__}]
    assert fake_hub.repos == [{"repo_id": "acme/merged", "repo_type": "model", "private": True, "exist_ok": True}]
    [commit] = fake_hub.commits
    out = Path(merged_run.output_path)
    expected = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    card = commit["files"].pop("README.md").decode()
    assert commit["files"] == expected  # every published file, byte for byte
    assert commit["message"] == f"MergeHub run #{merged_run.pk}: merged ties"
    assert card.startswith("---\n") and yaml.safe_load(card.split("---\n")[1])["tags"] == ["mergehub", "merge"]
    assert "## Configuration (mergekit YAML)" in card
    # recorded: the commit, the files; the token erased; the audit event
    assert push.commit_oid.startswith("c0ffee") and push.commit_url.endswith(f"/commit/{push.commit_oid}")
    assert push.repo_url == "http://hub.invalid/acme/merged"
    assert sorted(push.files_pushed) == sorted([*expected, "README.md"])
    assert push.token == ""
    event = AuditEvent.objects.get(action=AuditEvent.Action.MODEL_PUSHED)
    assert (event.team, event.actor, event.target_type, event.target_id) == (merged_run.team, carol, "run",
                                                                             str(merged_run.pk))
    assert event.details == {"repo": "acme/merged", "commit": push.commit_oid, "url": push.commit_url}
    assert "hf_typedsecret" not in str(push.log) and "hf_typedsecret" not in str(event.details)
    assert output_state(merged_run) == before and run_state(merged_run) == row


def test_without_a_typed_token_the_worker_uses_its_own(merged_run, carol, fake_hub, run_on_commit):
    push = _push(merged_run, carol, run_on_commit, private=False)
    assert push.status == "succeeded", push.error
    assert fake_hub.clients[0]["token"] is None  # huggingface_hub then uses HF_TOKEN / its stored login
    assert fake_hub.repos[0]["private"] is False


def test_an_output_readme_is_replaced_by_the_card(merged_run, carol, fake_hub, run_on_commit):
    (Path(merged_run.output_path) / "README.md").write_text("the base's own card")
    push = _push(merged_run, carol, run_on_commit)
    assert push.status == "succeeded", push.error
    card = fake_hub.commits[0]["files"]["README.md"].decode()
    assert "the base's own card" not in card and "MergeHub" in card
    assert any("replaced by the generated model card" in line["msg"] for line in push.log)


def _assert_failed_and_nothing_changed(push, run, before, row, *phrases):
    assert push.status == "failed"
    for phrase in phrases:
        assert phrase in push.error, push.error
    assert "nothing was pushed and nothing changed here" in push.error
    assert push.token == ""
    assert "hf_typedsecret" not in push.error + str(push.log)
    assert push.commit_url == push.commit_oid == "" and push.files_pushed == []
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.MODEL_PUSHED).exists()
    assert output_state(run) == before and run_state(run) == row


@pytest.mark.parametrize("how", ["environment", "constant"])
def test_offline_mode_fails_clearly_and_changes_nothing(merged_run, carol, fake_hub, run_on_commit, monkeypatch, how):
    from huggingface_hub import constants

    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before, row = output_state(merged_run), run_state(merged_run)
    push = _push(merged_run, carol, run_on_commit, token="hf_typedsecret")
    _assert_failed_and_nothing_changed(push, merged_run, before, row,
                                       "The Hugging Face Hub cannot be reached (offline mode is on")
    assert fake_hub.clients == []  # not even a client was made


def test_offline_mode_inside_huggingface_hub_is_explained(merged_run, carol, run_on_commit, monkeypatch):
    """huggingface_hub's own offline refusal (raised by its HTTP layer), with the real HfApi."""
    from huggingface_hub import constants

    from mergehub.publishing import hub

    monkeypatch.setattr(hub, "check_online", lambda: None)  # let the request reach huggingface_hub's own check
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before, row = output_state(merged_run), run_state(merged_run)
    push = _push(merged_run, carol, run_on_commit, token="hf_typedsecret")
    _assert_failed_and_nothing_changed(push, merged_run, before, row, "offline mode is on")


def test_an_unreachable_endpoint_fails_clearly_and_changes_nothing(merged_run, carol, run_on_commit, settings):
    settings.MERGEHUB_HF_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens
    before, row = output_state(merged_run), run_state(merged_run)
    push = _push(merged_run, carol, run_on_commit, token="hf_typedsecret")
    _assert_failed_and_nothing_changed(push, merged_run, before, row,
                                       "The Hugging Face Hub cannot be reached at http://127.0.0.1:9")


@pytest.mark.parametrize(("status", "phrase"), [(401, "refused the credentials (401)"),
                                                (403, "refused the credentials (403)"),
                                                (404, "has no acme/merged"),
                                                (500, "refused the push (500")])
def test_a_refusal_from_the_hub_fails_clearly(merged_run, carol, run_on_commit, monkeypatch, settings, status, phrase):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from mergehub.publishing import hub

    settings.MERGEHUB_HF_ENDPOINT = "http://hub.invalid"
    request = httpx2.Request("POST", "http://hub.invalid/api/repos/create")
    error = HfHubHTTPError("refused", response=httpx2.Response(status, request=request))
    monkeypatch.setattr(hub, "HfApi", FakeHub(fail_with=error))
    before, row = output_state(merged_run), run_state(merged_run)
    push = _push(merged_run, carol, run_on_commit, token="hf_typedsecret")
    _assert_failed_and_nothing_changed(push, merged_run, before, row, phrase)
    if status in (401, 403):
        assert "the token you typed" in push.error


def test_a_push_of_an_output_deleted_meanwhile_fails_clearly(merged_run, carol, fake_hub, run_on_commit):
    import shutil

    with run_on_commit():
        push = services.queue_push(user=carol, run=merged_run, repo_id="acme/merged", token="hf_typedsecret")
        shutil.rmtree(merged_run.output_path)
    push.refresh_from_db()
    assert push.status == "failed" and "not on disk any more" in push.error
    assert push.token == "" and fake_hub.commits == []


def test_the_queue_refuses_what_cannot_be_pushed(merged_run, bob, carol, settings):
    from django.core.exceptions import PermissionDenied, ValidationError

    with pytest.raises(PermissionDenied):
        services.queue_push(user=bob, run=merged_run, repo_id="acme/merged")
    with pytest.raises(ValidationError, match="owner/name"):
        services.queue_push(user=carol, run=merged_run, repo_id="merged")
    with pytest.raises(ValidationError, match="not a Hugging Face token"):
        services.queue_push(user=carol, run=merged_run, repo_id="acme/merged", token="hf_ with space")
    services.queue_push(user=carol, run=merged_run, repo_id="acme/merged")  # stays queued (no commit here)
    with pytest.raises(ValidationError, match="already being pushed"):
        services.queue_push(user=carol, run=merged_run, repo_id="acme/merged")
    merged_run.status = "failed"
    with pytest.raises(ValidationError, match="only a run that succeeded"):
        services.queue_push(user=carol, run=merged_run, repo_id="acme/other")


def test_the_reaper_erases_the_token_of_a_push_whose_worker_died(merged_run, carol, settings):
    from datetime import timedelta

    from django.utils import timezone

    from mergehub.jobs import reaper

    push = services.queue_push(user=carol, run=merged_run, repo_id="acme/merged", token="hf_typedsecret")
    long_ago = timezone.now() - timedelta(hours=1)
    HubPush.objects.filter(pk=push.pk).update(status="running", started_at=long_ago, heartbeat_at=long_ago,
                                              worker="elsewhere:1")
    assert reaper.reap_stale_jobs() == 1
    push.refresh_from_db()
    assert push.status == "failed" and push.token == ""
