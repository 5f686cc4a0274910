"""The review form on a run's report: one text box and one button per action (comment, request
review, approve, request changes, withdraw), posted here; and deleting a comment."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from mergehub.runs.selectors import get_run

from . import services
from .models import BODY_MAX_CHARS, Entry

# A refused comment comes back in the form; one over the length limit too, so that its writer can
# cut it (up to twice the limit: the draft lives in the session).
DRAFT_MAX_CHARS = 2 * BODY_MAX_CHARS

DONE = {
    "comment": "Comment added.",
    "request": "Review requested: the team sees the run under “Review requested”.",
    "approve": "Approved.",
    "request_changes": "Changes requested.",
    "withdraw": "Review request withdrawn.",
}


@login_required
@require_POST
def review(request, pk):
    run = get_run(user=request.user, pk=pk)
    action, body = request.POST.get("action", ""), request.POST.get("body", "")
    calls = {
        "comment": lambda: services.add_comment(run=run, user=request.user, body=body),
        "request": lambda: services.request_review(run=run, user=request.user, body=body),
        "approve": lambda: services.decide(run=run, user=request.user, decision="approve", body=body),
        "request_changes": lambda: services.decide(run=run, user=request.user, decision="request_changes", body=body),
        "withdraw": lambda: services.withdraw_request(run=run, user=request.user),
    }
    if action not in calls:
        messages.error(request, "Choose what to do: comment, request review, approve, request changes or withdraw.")
    else:
        try:
            calls[action]()
        except ValidationError as error:
            for message in error.messages:
                messages.error(request, message)
            request.session["review_draft"] = body[:DRAFT_MAX_CHARS]  # kept for the form, not lost
        else:
            messages.success(request, DONE[action])
    return redirect(f"{reverse('runs:detail', args=[run.pk])}#review")


@login_required
@require_POST
def delete_comment(request, pk, entry_pk):
    run = get_run(user=request.user, pk=pk)
    entry = get_object_or_404(Entry, run=run, pk=entry_pk)
    try:
        services.delete_comment(entry=entry, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Comment deleted.")
    return redirect(f"{reverse('runs:detail', args=[run.pk])}#review")
