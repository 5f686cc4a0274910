"""Pushes of merged models to the Hugging Face Hub: one job row per push, on the job seam
(mergehub/jobs). Downloads keep no rows: they are streamed from the run's output directory."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mergehub.accounts.models import Team
from mergehub.jobs.models import Job, job_constraints, job_indexes


class HubPush(Job):
    """Upload a succeeded run's output, with a generated model card, to a Hub repository.

    ``token`` is the Hub token the member typed, if any (blank: the worker's own configured
    token). It is kept only until the job ends: the runner blanks it in the same write that
    records the final status (succeeded, failed or cancelled), and a queued push cancelled from
    the page is blanked as it is cancelled. It is never rendered, logged or shown in the admin.
    """

    runner_kind = "hub_push"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="hub_pushes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="hub_pushes")
    run = models.ForeignKey("runs.MergeRun", on_delete=models.CASCADE, related_name="hub_pushes")
    repo_id = models.CharField(max_length=200)  # "owner/name"
    private = models.BooleanField(default=True)  # for a repository the push creates
    token = models.CharField(max_length=500, blank=True)
    endpoint = models.CharField(max_length=500, blank=True)  # the Hub pushed to (MERGEHUB_HF_ENDPOINT or default)
    # what the Hub answered
    repo_url = models.TextField(blank=True)
    commit_url = models.TextField(blank=True)
    commit_oid = models.CharField(max_length=64, blank=True)
    files_pushed = models.JSONField(default=list, blank=True)  # [file name, …] as uploaded (README.md included)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["run", "-created_at"], name="hubpush_run_recent"),
            *job_indexes("hubpush"),
        ]
        constraints = job_constraints("hubpush")

    def __str__(self) -> str:
        return f"push #{self.pk} of run #{self.run_id} to {self.repo_id}"

    @property
    def repo_link(self) -> str:
        """The repository's page (as the Hub answered after a push; else the endpoint's usual
        address); "" unless it is an http(s) address."""
        url = self.repo_url or f"{(self.endpoint or 'https://huggingface.co').rstrip('/')}/{self.repo_id}"
        return _web_address(url)

    @property
    def commit_link(self) -> str:
        return _web_address(self.commit_url)


def _web_address(url: str) -> str:
    """``url`` if it is an http(s) address (what the Hub answered is shown as a link), else ""."""
    return url if url.lower().startswith(("https://", "http://")) else ""
