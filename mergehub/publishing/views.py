"""Download a run's merged model (file by file, or all of it as one tar streamed as it is made)
and push it to the Hugging Face Hub. Views parse input, call a selector or service, and answer;
the access check is ``get_run``'s (a run of another team is a 404)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from mergehub.runs.selectors import get_run

from . import archive, selectors, services
from .outputs import ModelUnavailable, UnknownFile, open_published_file, published_files


def _panel(run) -> str:
    return reverse("runs:detail", args=[run.pk]) + "#model"


def _unavailable(request, run, err: ModelUnavailable):
    return render(request, "publishing/unavailable.html", {"run": run, "problem": str(err)}, status=404)


@login_required
def download_file(request, pk, name):
    """One published file, streamed from disk (never read whole)."""
    run = get_run(user=request.user, pk=pk)
    try:
        handle, file = open_published_file(run, name)
    except ModelUnavailable as err:
        return _unavailable(request, run, err)
    except UnknownFile:
        raise Http404("No such file.") from None
    return FileResponse(handle, as_attachment=True, filename=file.name)


@login_required
def download_archive(request, pk):
    """Every published file as one uncompressed tar, generated chunk by chunk while it is sent."""
    run = get_run(user=request.user, pk=pk)
    try:
        published_files(run)
    except ModelUnavailable as err:
        return _unavailable(request, run, err)
    response = StreamingHttpResponse(archive.tar_chunks(run), content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{archive.archive_filename(run)}"'
    return response


@login_required
@require_POST
def push(request, pk):
    run = get_run(user=request.user, pk=pk)
    try:
        job = services.queue_push(user=request.user, run=run, repo_id=request.POST.get("repo_id", ""),
                                  private=request.POST.get("visibility", "private") != "public",
                                  token=request.POST.get("token", ""))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Queued push #{job.pk} of run #{run.pk} to {job.repo_id}.")
    return redirect(_panel(run))


@login_required
@require_POST
def push_cancel(request, pk, push_pk):
    run = get_run(user=request.user, pk=pk)
    job = selectors.get_push(run=run, pk=push_pk)
    try:
        services.cancel_push(push=job, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    return redirect(_panel(run))
