"""The index job's runner: downloads a Hub snapshot if needed, then indexes an expert against
its family's base (a base only needs its layout read). The life cycle is the one every job
shares (mergehub/jobs/runner.py); the checkpoint's index_status follows the job's status."""

from __future__ import annotations

from mergehub.engine.api import Progress
from mergehub.jobs.runner import JobRunner

from . import services
from .models import Checkpoint, IndexJob


class IndexRunner(JobRunner):
    model = IndexJob
    kind = "index"

    def work(self) -> dict:
        checkpoint = Checkpoint.objects.select_related("family__base").get(pk=self.job.checkpoint_id)
        self.on_progress(Progress("download" if not checkpoint.path else "inspect", 0, 1))
        layout = services.materialise(checkpoint)
        if checkpoint.role == Checkpoint.Role.BASE:
            services.finish_base(checkpoint, layout)
        else:
            services.index_expert(checkpoint, progress=self.on_progress, cancel=self.should_cancel)
        return {}

    def success_log(self, fields: dict) -> list[str]:
        checkpoint = Checkpoint.objects.only("name", "role").get(pk=self.job.checkpoint_id)
        return [f"succeeded: {checkpoint.name} is ready"]

    @classmethod
    def settle_related(cls, job: IndexJob, status: str) -> None:
        services.settle_checkpoint(job, status)


def index_now(checkpoint: Checkpoint) -> Checkpoint:
    """Run the checkpoint's queued index job in this process (demo setup and management
    commands, which must not wait for a worker); the wake-up sent for it then finds nothing."""
    job = checkpoint.index_jobs.filter(status=IndexJob.Status.QUEUED).order_by("created_at").first()
    runner = IndexRunner.claim(job.pk) if job is not None else None
    if runner is not None:
        runner.execute()
    checkpoint.refresh_from_db()
    return checkpoint
