"""The push job's runner: upload a succeeded run's output and its model card to a Hub
repository with huggingface_hub (see mergehub/jobs/runner.py for the life cycle every job
shares, and hub.py for the seam to the Hub).

Stages: ``prepare`` (the files listed and opened without following links, the card written
into a temporary folder, the Hub's offline mode checked), ``upload`` (``create_repo`` with
``exist_ok``, then one ``create_commit`` of every file plus README.md). The run's row and its
output directory are only ever read. Whatever the outcome, the typed token is blanked in the
same write that records the job's final status (``settle_related``); a success is recorded in
the team's audit log in that write too.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from huggingface_hub import CommitOperationAdd

import mergehub
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record
from mergehub.engine.api import Cancelled, Progress
from mergehub.jobs.runner import JobRunner
from mergehub.runs.models import MergeRun

from . import hub
from .model_card import model_card
from .models import HubPush
from .outputs import open_at, opened_files

CARD_NAME = "README.md"


class HubPushRunner(JobRunner):
    model = HubPush
    kind = "hub_push"

    def work(self) -> dict:
        push = self.job
        run = MergeRun.objects.select_related("team").get(pk=push.run_id)
        typed_token = bool(push.token)
        hub.check_online()
        with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="mergehub-push-") as tmp:
            files, dir_fd = stack.enter_context(opened_files(run))
            card = Path(tmp) / CARD_NAME
            card.write_text(model_card(run), encoding="utf-8")
            operations = self._operations(stack, files, dir_fd, card)
            self._check_cancel()
            api = hub.client(token=push.token or None)
            names = [op.path_in_repo for op in operations]
            self.on_progress(Progress("upload", 0, 1, "commits", f"{len(names)} files to {push.repo_id}"))
            try:
                repo = api.create_repo(repo_id=push.repo_id, repo_type="model", private=push.private,
                                       exist_ok=True)
                self._check_cancel()
                commit = api.create_commit(
                    repo_id=push.repo_id, repo_type="model", operations=operations,
                    commit_message=f"MergeHub run #{run.pk}: {' '.join(run.name.split())}"[:200],
                    commit_description=f"Pushed by MergeHub {mergehub.__version__} from run #{run.pk} "
                                       f"({run.method} at budget {run.budget}).")
            except Cancelled:
                raise
            except Exception as err:
                raise hub.explain(err, repo_id=push.repo_id, typed_token=typed_token) from err
        return {"repo_url": str(getattr(commit, "repo_url", None) or repo),  # RepoUrl: a str
                "commit_url": str(commit.commit_url or ""), "commit_oid": str(commit.oid or "")[:64],
                "files_pushed": names}

    def _operations(self, stack: ExitStack, files, dir_fd: int, card: Path) -> list[CommitOperationAdd]:
        """One upload per published file (opened without following links, kept open until the
        commit is made; huggingface_hub hashes and sends them in chunks), and the card."""
        total = sum(f.size for f in files) or 1
        done = 0
        operations = []
        for file in files:
            self._check_cancel()
            if file.name == CARD_NAME:
                self.note(f"the output's {CARD_NAME} (copied from the base) is replaced by the generated model card")
                continue
            fd, _st = open_at(dir_fd, file.name)
            handle = stack.enter_context(os.fdopen(fd, "rb"))
            self.on_progress(Progress("prepare", done, total, "bytes", file.name))
            operations.append(CommitOperationAdd(path_in_repo=file.name, path_or_fileobj=handle))
            done += file.size
        operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(card)))
        self.on_progress(Progress("prepare", total, total, "bytes", "model card written"))
        return operations

    def _check_cancel(self) -> None:
        if self.should_cancel():
            raise Cancelled("cancelled before the upload")

    def success_log(self, fields: dict) -> list[str]:
        return [f"succeeded: pushed {len(fields['files_pushed'])} files to {self.job.repo_id}: {fields['commit_url']}"]

    @classmethod
    def settle_related(cls, job: HubPush, status: str) -> None:
        """The token lives until the job ends; a success goes into the team's audit log."""
        if status not in HubPush.FINISHED:
            return
        HubPush.objects.filter(pk=job.pk).update(token="")
        job.token = ""
        if status == HubPush.Status.SUCCEEDED:
            record(team=job.team, actor=job.author, action=AuditEvent.Action.MODEL_PUSHED, target=job.run,
                   label=job.run.name, details={"repo": job.repo_id, "commit": job.commit_oid, "url": job.commit_url})
