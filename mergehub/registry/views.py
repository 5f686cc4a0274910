"""Checkpoint pages: list, detail (with the delta-norm chart), register, re-index, delete."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mergehub.accounts.current_team import current_team
from mergehub.accounts.models import Role
from mergehub.accounts.selectors import has_role
from mergehub.engine.api import MergeHubError
from mergehub.ui.form_errors import add_service_errors
from mergehub.ui.pagination import paginate

from . import selectors, services
from .charts import delta_norms_chart
from .forms import RegisterCheckpointForm
from .models import Checkpoint
from .roots import checkpoint_roots

INDEX_ACTIVE = (Checkpoint.IndexStatus.PENDING, Checkpoint.IndexStatus.INDEXING)
JOBS_SHOWN = 5  # index jobs listed on a checkpoint's page
LOG_LINES_SHOWN = 300
RETRYABLE = ("failed", "cancelled")  # index job statuses a "Retry" re-queues (services.retry_index)


@login_required
def checkpoint_list(request):
    team = current_team(request)
    status = request.GET.get("status", "")
    role = request.GET.get("role", "")
    checkpoints = (selectors.checkpoints_for(user=request.user, team=team, status=status or None,
                                             role=role or None)
                   if team else Checkpoint.objects.none())
    families = (selectors.families_for(user=request.user, team=team)
                .defer("signature", "base__index_stats", "base__file_hashes").annotate(
        expert_count=Count("checkpoints", filter=Q(checkpoints__role=Checkpoint.Role.EXPERT)))
        if team else [])
    filters = {"status": status, "role": role}
    pages = paginate(request, selectors.checkpoints_for_listing(checkpoints), filters=filters)
    return render(request, "registry/list.html", {
        "team": team, "checkpoints": pages["page_obj"], **pages, "families": families, "filters": filters,
        "statuses": Checkpoint.IndexStatus.choices, "roles": Checkpoint.Role.choices,
        "can_register": bool(team) and has_role(user=request.user, team=team, role=Role.MEMBER)})


@login_required
def checkpoint_detail(request, pk):
    checkpoint = selectors.get_checkpoint(user=request.user, pk=pk)
    norms = selectors.delta_norms_by_layer(checkpoint=checkpoint) if checkpoint.role == Checkpoint.Role.EXPERT else None
    stats = checkpoint.index_stats or {}
    tensors = sorted((norms or {}).get("tensors", []), key=lambda t: -t["delta_norm"])
    index_jobs = list(selectors.index_jobs_of(checkpoint=checkpoint)[:JOBS_SHOWN])
    index_job = index_jobs[0] if index_jobs else None
    return render(request, "registry/detail.html", {
        "checkpoint": checkpoint, "chart": delta_norms_chart(norms), "stats": stats,
        "tensors": tensors, "blocks": _block_totals(stats),
        "indexing": checkpoint.index_status in INDEX_ACTIVE,
        "index_job": index_job, "index_jobs": index_jobs, "log": _log_of(index_job),
        "retry_job": index_job if index_job is not None and index_job.status in RETRYABLE else None,
        "can_reindex": has_role(user=request.user, team=checkpoint.team, role=Role.MEMBER)})


def _log_of(job) -> list:
    return (job.log or [])[-LOG_LINES_SHOWN:] if job is not None else []


def _block_totals(stats: dict) -> dict:
    tensors = (stats or {}).get("tensors", {}).values()
    total = sum(int(t.get("blocks") or 0) for t in tensors)
    zero = sum(int(t.get("zero_blocks") or 0) for t in tensors)
    return {"total": total, "zero": zero, "nonzero": total - zero}


@login_required
def checkpoint_status(request, pk):
    """htmx poll target while a checkpoint's index job is active (progress and log); reloads
    the page when it is done."""
    checkpoint = selectors.get_checkpoint(user=request.user, pk=pk)
    index_job = selectors.index_jobs_of(checkpoint=checkpoint).first()
    if index_job is None or not index_job.is_active:
        response = HttpResponse(status=204)
        response["HX-Refresh"] = "true"
        return response
    return render(request, "registry/_index_live.html", {"checkpoint": checkpoint, "index_job": index_job,
                                                         "log": _log_of(index_job)})


@login_required
def register(request):
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    families = selectors.families_for(user=request.user, team=team)
    form = RegisterCheckpointForm(request.POST if request.method == "POST" else None,
                                  families=families, roots=checkpoint_roots(team))
    if request.method == "POST" and form.is_valid():
        try:
            checkpoint = services.register_checkpoint(team=team, user=request.user, **form.service_kwargs())
        except (ValidationError, MergeHubError) as error:
            add_service_errors(form, error)
        else:
            if checkpoint.index_status == Checkpoint.IndexStatus.READY:
                messages.success(request, f"Registered {checkpoint.name}.")
            else:
                messages.success(request, f"Registered {checkpoint.name}; indexing it against its base.")
            return redirect("registry:detail", pk=checkpoint.pk)
    return render(request, "registry/register.html", {
        "form": form, "team": team, "families": families,
        "can_register": has_role(user=request.user, team=team, role=Role.MEMBER)})


@login_required
@require_POST
def reindex(request, pk):
    checkpoint = selectors.get_checkpoint(user=request.user, pk=pk)
    try:
        services.reindex_checkpoint(checkpoint=checkpoint, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Re-indexing {checkpoint.name}.")
    return redirect("registry:detail", pk=checkpoint.pk)


@login_required
@require_POST
def cancel_index(request, pk, job_pk):
    job = selectors.get_index_job(user=request.user, checkpoint_pk=pk, pk=job_pk)
    try:
        job = services.cancel_index(job=job, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Indexing cancelled." if job.status == job.Status.CANCELLED
                         else "Cancel requested; indexing stops at its next block.")
    return redirect("registry:detail", pk=pk)


@login_required
@require_POST
def retry_index(request, pk, job_pk):
    job = selectors.get_index_job(user=request.user, checkpoint_pk=pk, pk=job_pk)
    try:
        services.retry_index(job=job, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Indexing {job.checkpoint.name} again.")
    return redirect("registry:detail", pk=pk)


@login_required
@require_POST
def delete(request, pk):
    """Delete a checkpoint (members and admins; services.delete_checkpoint says when not)."""
    checkpoint = selectors.get_checkpoint(user=request.user, pk=pk)
    try:
        services.delete_checkpoint(checkpoint=checkpoint, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("registry:detail", pk=checkpoint.pk)
    messages.success(request, f"Deleted {checkpoint.name}; its files were left where they are.")
    return redirect("registry:list")
