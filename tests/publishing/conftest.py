"""Fixtures for getting a model out: a run merged by the (sync) worker with a real tiny output,
and a stand-in for huggingface_hub's HfApi that records what a push would upload."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import RepoUrl

from tests.pages.conftest import ties_inputs


@pytest.fixture
def merged_run(registered_family, alice, acme, run_on_commit):
    """A ties run at budget 0.5, merged with deviation measured: its output is on disk."""
    from mergehub.runs.services import create_run

    with run_on_commit():
        run = create_run(user=alice, team=acme, name="merged ties", measure_deviation=True,
                         **ties_inputs(registered_family))
    run.refresh_from_db()
    assert run.status == "succeeded", (run.status, run.error)
    return run


def output_state(run) -> dict:
    """{file: (size, mtime_ns, sha256)} of the run's output directory, to show nothing changed."""
    out = Path(run.output_path)
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(out.iterdir())}


def run_state(run) -> tuple:
    """What a push must never change on the run's row."""
    run.refresh_from_db()
    return (run.status, run.output_path, run.metrics, run.manifest, run.error, run.finished_at, len(run.log))


class FakeHub:
    """Replaces ``mergehub.publishing.hub.HfApi``: every client it makes records into it, and
    ``create_commit`` reads each operation's bytes as huggingface_hub would send them."""

    def __init__(self, fail_with: BaseException | None = None):
        self.clients, self.repos, self.commits = [], [], []
        self.fail_with = fail_with

    def __call__(self, **kwargs):
        hub = self
        self.clients.append(kwargs)

        class Api:
            def create_repo(self, *, repo_id, repo_type=None, private=None, exist_ok=False):
                hub.repos.append({"repo_id": repo_id, "repo_type": repo_type, "private": private, "exist_ok": exist_ok})
                if hub.fail_with is not None:
                    raise hub.fail_with
                return RepoUrl(f"{kwargs['endpoint']}/{repo_id}", endpoint=kwargs["endpoint"])

            def create_commit(self, *, repo_id, operations, commit_message, commit_description=None, repo_type=None):
                files = {}
                for op in operations:
                    with op.as_file() as f:
                        files[op.path_in_repo] = f.read()
                hub.commits.append({"repo_id": repo_id, "files": files, "message": commit_message,
                                    "description": commit_description, "repo_type": repo_type})
                oid = "c0ffee" + "0" * 34
                return SimpleNamespace(commit_url=f"{kwargs['endpoint']}/{repo_id}/commit/{oid}", oid=oid,
                                       repo_url=RepoUrl(f"{kwargs['endpoint']}/{repo_id}", endpoint=kwargs["endpoint"]))

        return Api()


@pytest.fixture
def fake_hub(monkeypatch, settings):
    """A FakeHub in place of HfApi, and an endpoint that is never contacted."""
    from mergehub.publishing import hub

    settings.MERGEHUB_HF_ENDPOINT = "http://hub.invalid"
    fake = FakeHub()
    monkeypatch.setattr(hub, "HfApi", fake)
    return fake


@pytest.fixture(autouse=True)
def no_hf_token(monkeypatch):
    """No Hub token or offline flag from the environment running the tests."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not os.environ.get("HF_HUB_OFFLINE")
