"""Writes for the registry: registering checkpoints and indexing experts against their base.

Registration validates everything it can before it writes (path under a root, readable
safetensors, same coordinate system as the family's base) and raises ValidationError keyed by
the form field at fault. Indexing (a full read of expert and base) happens in a job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record
from mergehub.engine import api as engine
from mergehub.engine.api import MergeHubError
from mergehub.jobs import dispatch
from mergehub.jobs.control import request_cancel
from mergehub.jobs.joblog import log_entry

from . import hf, pinning
from .models import Checkpoint, Family, IndexJob
from .roots import block_size, catalog_dir, hf_cache_dir, resolve_checkpoint_dir

log = logging.getLogger(__name__)
Status = Checkpoint.IndexStatus
INDEX_QUEUE = "cpu"  # indexing reads and hashes: no GPU needed


def signature_of(layout) -> dict[str, list]:
    """{tensor: [dtype, shape]}: the coordinate system experts must share with the base."""
    return {name: [t.dtype, list(t.shape)] for name, t in sorted(layout.tensors.items())}


def signature_digest(signature: dict) -> str:
    return hashlib.sha256(json.dumps(signature, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _inspect(path: Path, field: str):
    try:
        return engine.inspect_model(path)
    except MergeHubError as err:
        raise ValidationError({field: str(err)}) from None


def _check_against_base(family: Family, layout, field: str) -> None:
    base = family.base
    if base is None or not base.path:
        raise ValidationError({"family_name": f"The base of family {family.name!r} is not available yet; "
                                              "wait until it is ready, then register experts."})
    base_layout = _inspect(Path(base.path), field)
    try:
        engine.check_compatible(base_layout, layout)
    except MergeHubError as err:
        raise ValidationError({field: str(err)}) from None


def _family_for_expert(team: Team, family_name: str | None, layout) -> Family:
    families = Family.objects.filter(team=team).select_related("base")
    if family_name:
        family = families.filter(name=family_name).first()
        if family is None:
            raise ValidationError({"family_name": f"No family named {family_name!r} in {team.name}; "
                                                  "register its base first."})
        return family
    digest = signature_digest(signature_of(layout))
    matches = list(families.filter(signature_digest=digest))
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(f.name for f in matches)
        raise ValidationError({"family_name": f"Several families match this expert ({names}); choose one."})
    raise ValidationError({"family_name": "No registered base matches this expert's tensors; register "
                                          "its base first or choose its family."})


def _family_for_base(team: Team, name: str, layout) -> Family:
    family = Family.objects.select_for_update().filter(team=team, name=name).first()
    if family is not None and family.base_id is not None:
        raise ValidationError({"family_name": f"Family {name!r} already has a base "
                                              f"({family.base.name}); choose another family name."})
    if family is None:
        family = Family(team=team, name=name)
    if layout is not None:
        _set_signature(family, layout)
    family.save()
    return family


def _set_signature(family: Family, layout) -> None:
    family.signature = signature_of(layout)
    family.signature_digest = signature_digest(family.signature)
    family.tensor_count = len(layout.tensors)


def _queue_index(checkpoint: Checkpoint, user, retry_of: IndexJob | None = None) -> IndexJob:
    """An index job for ``checkpoint``, woken once the caller's transaction commits."""
    job = IndexJob.objects.create(team=checkpoint.team, checkpoint=checkpoint, author=user,
                                  queue=INDEX_QUEUE, stage="queued", retry_of=retry_of,
                                  log=[log_entry(f"queued by {user or 'MergeHub'}"
                                                 + (f" as a retry of index job #{retry_of.pk}" if retry_of else ""))])
    dispatch.wake_on_commit(job)
    return job


@transaction.atomic
def register_checkpoint(*, team: Team, user, name: str, role: str, family_name: str | None = None,
                        local_path: str | None = None, hf_repo_id: str | None = None,
                        hf_revision: str | None = None) -> Checkpoint:
    """Register a base or an expert of ``team`` from a local directory or a Hugging Face repo.

    A base creates (or completes) its family and is ready at once; an expert is checked
    against its family's base and queued for indexing.
    """
    require_role(user=user, team=team, role=Role.MEMBER, action="register checkpoints")
    name = (name or "").strip()
    family_name = (family_name or "").strip() or None
    local_path = (local_path or "").strip()
    hf_repo_id = (hf_repo_id or "").strip()
    hf_revision = (hf_revision or "").strip()
    if not name:
        raise ValidationError({"name": "Give the checkpoint a name."})
    if Checkpoint.objects.filter(team=team, name=name).exists():
        raise ValidationError({"name": f"{team.name} already has a checkpoint named {name!r}."})
    if role not in Checkpoint.Role.values:
        raise ValidationError({"role": f"Role must be base or expert, not {role!r}."})
    if bool(local_path) == bool(hf_repo_id):
        raise ValidationError({"local_path": "Give either a local path or a Hugging Face repo id (not both)."})

    if local_path:
        source, field = Checkpoint.Source.LOCAL, "local_path"
        path: Path | None = resolve_checkpoint_dir(local_path, team, field)
    else:
        source, field = Checkpoint.Source.HF, "hf_repo_id"
        if not hf.valid_repo_id(hf_repo_id):
            raise ValidationError({field: f"{hf_repo_id!r} is not a repo id; write it as owner/name."})
        if not hf.valid_revision(hf_revision):
            raise ValidationError({"hf_revision": f"{hf_revision[:100]!r} is not a valid revision; give a branch "
                                                  "or tag name (such as main or v1.0, without '..') or a "
                                                  "40-character commit hash."})
        try:
            path = hf.cached_snapshot(hf_repo_id, hf_revision, cache_dir=hf_cache_dir(team))
        except hf.HubError as err:
            raise ValidationError({field: str(err)}) from None
        if path is None and hf.offline():
            raise ValidationError({field: f"{hf_repo_id}@{hf_revision or 'main'} is not in the offline "
                                          "cache and HF_HUB_OFFLINE is set; download it first."})

    layout = _inspect(path, field) if path is not None else None  # None: HF download pending
    if role == Checkpoint.Role.BASE:
        family = _family_for_base(team, family_name or name, layout)
    else:
        if layout is None:
            family = _family_for_expert(team, family_name, None) if family_name else None
            if family is None:
                raise ValidationError({"family_name": "Choose the family of this expert."})
        else:
            family = _family_for_expert(team, family_name, layout)
            _check_against_base(family, layout, field)

    checkpoint = Checkpoint(
        team=team, family=family, name=name, role=role, source=source,
        local_path=local_path if source == Checkpoint.Source.LOCAL else "",
        hf_repo_id=hf_repo_id, hf_revision=hf_revision, path=str(path) if path else "",
        size_bytes=layout.weight_bytes if layout else 0,
        tensor_count=len(layout.tensors) if layout else 0,
        index_status=Status.READY if (role == Checkpoint.Role.BASE and layout) else Status.PENDING,
        indexed_at=timezone.now() if (role == Checkpoint.Role.BASE and layout) else None,
        added_by=user,
    )
    if path is not None:
        try:
            checkpoint.file_identity = pinning.pin_checkpoint(checkpoint)
        except MergeHubError as err:
            raise ValidationError({field: str(err)}) from None
    checkpoint.save()
    if role == Checkpoint.Role.BASE:
        family.base = checkpoint
        family.save(update_fields=["base"])
    if checkpoint.index_status == Status.PENDING:
        _queue_index(checkpoint, user)
    record(team=team, actor=user, action=AuditEvent.Action.CHECKPOINT_REGISTERED, target=checkpoint,
           details={"role": role, "source": source, "family": family.name if family else None})
    return checkpoint


def reindex_checkpoint(*, checkpoint: Checkpoint, user) -> Checkpoint:
    """Queue a fresh index (e.g. after the files changed or a failed index)."""
    require_role(user=user, team=checkpoint.team, role=Role.MEMBER, action="re-index checkpoints")
    return queue_reindex(checkpoint=checkpoint, user=user)


@transaction.atomic
def queue_reindex(*, checkpoint: Checkpoint, user=None, retry_of: IndexJob | None = None) -> Checkpoint:
    """Reset a checkpoint to "pending" and queue an index job. No permission check: for trusted
    callers (the Django admin action, management commands) and the services above."""
    checkpoint = Checkpoint.objects.select_for_update().get(pk=checkpoint.pk)
    if checkpoint.index_jobs.filter(status__in=IndexJob.ACTIVE).exists():
        raise ValidationError(f"{checkpoint.name} is being indexed right now; wait for it to finish or cancel it.")
    checkpoint.index_status = Status.PENDING
    checkpoint.index_error = ""
    checkpoint.save(update_fields=["index_status", "index_error"])
    job = _queue_index(checkpoint, user, retry_of=retry_of)
    record(team=checkpoint.team, actor=user, action=AuditEvent.Action.CHECKPOINT_REINDEXED, target=checkpoint,
           details={"index_job": job.pk, **({"retry_of": retry_of.pk} if retry_of else {})})
    return checkpoint


@transaction.atomic
def cancel_index(*, job: IndexJob, user) -> IndexJob:
    """A queued index job is cancelled at once; a running one stops at its next block."""
    require_role(user=user, team=job.team, role=Role.MEMBER, action="cancel indexing")
    return request_cancel(IndexJob, job.pk, by=user, label=f"Index job #{job.pk}")


def retry_index(*, job: IndexJob, user) -> Checkpoint:
    """Index the checkpoint again after a failed or cancelled index job."""
    require_role(user=user, team=job.team, role=Role.MEMBER, action="re-index checkpoints")
    if job.is_active:
        raise ValidationError(f"Index job #{job.pk} is still {job.status}; cancel it or wait before retrying.")
    return queue_reindex(checkpoint=job.checkpoint, user=user, retry_of=job)


def checkpoint_in_use(checkpoint: Checkpoint) -> str | None:
    """Why ``checkpoint`` may not be deleted now, or None: an index job of its own, or a merge
    run, sweep or evaluation that is queued or running with it, or (for a base) experts that
    still belong to its family. Finished runs and sweeps may outlive it: they keep their
    config and manifest, and a retry of one then says that a checkpoint was deleted."""
    from mergehub.evaluation.models import EvaluationJob, SweepJob
    from mergehub.runs.models import MergeRun

    if checkpoint.index_jobs.filter(status__in=IndexJob.ACTIVE).exists():
        return f"{checkpoint.name} is being indexed right now; cancel its index job first."
    runs = MergeRun.objects.filter(status__in=MergeRun.ACTIVE).filter(
        models.Q(base=checkpoint) | models.Q(experts=checkpoint)).distinct()
    run = runs.order_by("pk").first()
    if run is not None:
        return f"Run #{run.pk} ({run.name}) is {run.status} with {checkpoint.name}; cancel it or wait until it ends."
    sweep = (SweepJob.objects.filter(status__in=SweepJob.ACTIVE)
             .filter(models.Q(base=checkpoint) | models.Q(experts=checkpoint)).distinct().order_by("pk").first())
    if sweep is not None:
        return (f"Sweep #{sweep.pk} ({sweep.name}) is {sweep.status} with {checkpoint.name}; "
                "cancel it or wait until it ends.")
    evaluation = EvaluationJob.objects.filter(status__in=EvaluationJob.ACTIVE, checkpoint=checkpoint).first()
    if evaluation is not None:
        return (f"Evaluation #{evaluation.pk} of {checkpoint.name} is {evaluation.status}; "
                "cancel it or wait until it ends.")
    family = checkpoint.family
    if checkpoint.role == Checkpoint.Role.BASE and family is not None and family.base_id == checkpoint.pk:
        others = family.checkpoints.exclude(pk=checkpoint.pk).order_by("name").values_list("name", flat=True)
        names = list(others[:4])
        if names:
            more = ", …" if len(names) > 3 else ""
            return (f"{checkpoint.name} is the base of family {family.name}, which still has "
                    f"{', '.join(names[:3])}{more}; delete those first.")
    return None


@transaction.atomic
def delete_checkpoint(*, checkpoint: Checkpoint, user) -> None:
    """Delete a checkpoint's registry entry, its index jobs and its evaluations; for a base, the
    family made for it too (it has no other checkpoint: checkpoint_in_use refuses otherwise).

    No file is ever removed: a local checkpoint's directory is the team's own (and may be
    outside MergeHub's data directory), a Hub snapshot stays in the team's cache (another
    registration of the same repo reuses it), and catalog entries are shared by content. So a
    delete cannot touch anything outside the team's roots. Refused with a ValidationError while
    something uses the checkpoint (checkpoint_in_use)."""
    require_role(user=user, team=checkpoint.team, role=Role.MEMBER, action="delete checkpoints")
    checkpoint = Checkpoint.objects.select_for_update(of=("self",)).select_related("family").get(pk=checkpoint.pk)
    reason = checkpoint_in_use(checkpoint)
    if reason:
        raise ValidationError(reason)
    family = checkpoint.family
    made_for_it = (family is not None and family.base_id == checkpoint.pk
                   and not family.checkpoints.exclude(pk=checkpoint.pk).exists())
    log.info("checkpoint %s (#%s) of %s deleted by %s", checkpoint.name, checkpoint.pk, checkpoint.team, user)
    # Recorded while the target still has its id; rolled back with the delete if that fails.
    record(team=checkpoint.team, actor=user, action=AuditEvent.Action.CHECKPOINT_DELETED, target=checkpoint)
    checkpoint.delete()
    if made_for_it:
        family.delete()


def settle_checkpoint(job: IndexJob, status: str) -> None:
    """The checkpoint's index_status follows its index job's status."""
    fields = {
        IndexJob.Status.RUNNING: {"index_status": Status.INDEXING, "index_error": ""},
        IndexJob.Status.SUCCEEDED: {"index_status": Status.READY, "index_error": "", "indexed_at": timezone.now()},
        IndexJob.Status.FAILED: {"index_status": Status.FAILED, "index_error": job.error},
        IndexJob.Status.CANCELLED: {"index_status": Status.FAILED,
                                    "index_error": "indexing was cancelled; re-index to use this checkpoint"},
    }.get(status)
    if fields:
        Checkpoint.objects.filter(pk=job.checkpoint_id).update(**fields)


# --- the indexing job's body (run by registry.indexing.IndexRunner) ----------------------------

def materialise(checkpoint: Checkpoint):
    """Download a pending HF snapshot if needed; return the checkpoint's layout."""
    if not checkpoint.path:
        checkpoint.path = str(hf.download(checkpoint.hf_repo_id, checkpoint.hf_revision,
                                          cache_dir=hf_cache_dir(checkpoint.team)))
        checkpoint.save(update_fields=["path"])
    # A (re-)index pins the files as they are now, after the same containment checks as at
    # registration: a directory swapped for a link since is refused here.
    checkpoint.file_identity = pinning.pin_checkpoint(checkpoint)
    layout = engine.inspect_model(Path(checkpoint.path))
    checkpoint.size_bytes = layout.weight_bytes
    checkpoint.tensor_count = len(layout.tensors)
    checkpoint.save(update_fields=["file_identity", "size_bytes", "tensor_count"])
    return layout


def finish_base(checkpoint: Checkpoint, layout) -> None:
    family = checkpoint.family
    if family is not None:
        _set_signature(family, layout)
        family.save(update_fields=["signature", "signature_digest", "tensor_count"])


def index_expert(checkpoint: Checkpoint, *, progress=None, cancel=None) -> None:
    family = checkpoint.family
    base = family.base if family is not None else None
    if base is None or base.index_status != Status.READY or not base.path:
        raise ValidationError("its family's base is not ready; index the base first, then re-index")
    pinning.verify_checkpoint(base)
    # index_model checks the expert against the base (MismatchedCheckpoints) before indexing.
    summary = engine.index_model(Path(checkpoint.path), Path(base.path), catalog_dir=catalog_dir(),
                                 block_size=block_size(), progress=progress, cancel=cancel).to_dict()
    checkpoint.index_stats = summary
    checkpoint.file_hashes = summary.get("file_hashes", {})
    checkpoint.save(update_fields=["index_stats", "file_hashes"])
    if not base.file_hashes and summary.get("base_file_hashes"):
        Checkpoint.objects.filter(pk=base.pk).update(file_hashes=summary["base_file_hashes"])
