"""Training the demo family as a background job: queue it (``queue_family_training``, used by
``make demo`` and the tasks page) and the runner, which trains (or reuses) the family in the
team's folder with mergehub.family, registers its base and experts, indexes the experts and
registers the four built-in tasks. The demo never waits for it: pages show its progress."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.engine.api import Progress
from mergehub.jobs import dispatch
from mergehub.jobs.control import request_cancel
from mergehub.jobs.joblog import log_entry
from mergehub.jobs.runner import JobRunner
from mergehub.registry.indexing import index_now
from mergehub.registry.models import Checkpoint, Family
from mergehub.registry.roots import team_checkpoints_dir
from mergehub.registry.services import register_checkpoint

from .models import FamilyJob
from .task_registry import ensure_builtin_tasks

DEFAULT_FAMILY = "tiny-llama"
TRAIN_QUEUE = "cpu"  # a 0.5M-parameter model trains faster on CPU cores than it ships to a GPU


def family_dir(team: Team, name: str, seed: int) -> Path:
    return team_checkpoints_dir(team) / f"{name}-seed{seed}"


@transaction.atomic
def queue_family_training(*, team: Team, user, name: str = DEFAULT_FAMILY, seed: int = 0) -> FamilyJob:
    """Queue the training and registration of the demo family (team admins)."""
    require_role(user=user, team=team, role=Role.ADMIN, action="train the demo family")
    if FamilyJob.objects.filter(team=team, family_name=name, status__in=FamilyJob.ACTIVE).exists():
        raise ValidationError(f"The {name} family is already being trained; see its progress on the tasks page.")
    if not 0 <= int(seed) < 2**31:
        raise ValidationError({"seed": "The seed must be between 0 and 2^31 − 1."})
    job = FamilyJob.objects.create(team=team, author=user, family_name=name, seed=int(seed),
                                   out_dir=str(family_dir(team, name, int(seed))), queue=TRAIN_QUEUE, stage="queued",
                                   log=[log_entry(f"queued by {user}: train the {name} family (seed {seed})")])
    dispatch.wake_on_commit(job)
    return job


def cancel_family_training(*, job: FamilyJob, user) -> FamilyJob:
    require_role(user=user, team=job.team, role=Role.ADMIN, action="stop the family's training")
    return request_cancel(FamilyJob, job.pk, by=user, label=f"Training #{job.pk}")


def latest_family_job(team: Team) -> FamilyJob | None:
    return FamilyJob.objects.filter(team=team).order_by("-created_at", "-id").first()


class FamilyRunner(JobRunner):
    model = FamilyJob
    kind = "train_family"

    def work(self) -> dict:
        from mergehub.family import load_family, train_family

        job = self.job
        out = Path(job.out_dir)
        info = load_family(out, seed=job.seed)
        if info is not None:
            self.note(f"reusing the family already trained in {out}")
        else:
            # django-q2 runs jobs in daemonic processes, which may not start the trainer's expert
            # processes: there train_family trains them one after the other (the same bytes).
            self.note(f"training the family into {out} (seed {job.seed})")
            info = train_family(out, seed=job.seed, progress=self.on_progress, cancel=self.should_cancel)
            self.note(f"trained in {info.seconds.get('total', 0):.0f} s")
        family = self._register(info)
        ensure_builtin_tasks(job.team, job.author)
        return {"family": family, "summary": {"seed": info.seed, "tasks": list(info.tasks),
                                              "parameters": info.parameters, "seconds": info.seconds,
                                              "root": str(info.root)}}

    def _register(self, info) -> Family:
        job = self.job
        models = [(f"{job.family_name}-base", "base", info.base)]
        models += [(f"{job.family_name}-{task}", "expert", info.experts[task]) for task in info.tasks]
        for i, (name, role, path) in enumerate(models):
            self.should_cancel()
            self.on_progress(Progress("register", i, len(models), "models", name))
            checkpoint = Checkpoint.objects.filter(team=job.team, name=name).first()
            if checkpoint is None:
                checkpoint = register_checkpoint(team=job.team, user=job.author, name=name, role=role,
                                                 family_name=job.family_name, local_path=str(path))
                self.note(f"registered {role} {name}")
            if checkpoint.index_status == Checkpoint.IndexStatus.PENDING:
                checkpoint = index_now(checkpoint)
            if not checkpoint.is_ready:
                raise ValidationError(f"{name} is {checkpoint.index_status}: {checkpoint.index_error or 'see its page'}")
        return Family.objects.get(team=job.team, name=job.family_name)

    def success_log(self, fields: dict) -> list[str]:
        return [f"succeeded: the {self.job.family_name} family and its four tasks are registered"]
