"""Reads for getting a model out: the run's published files, and its pushes to the Hub. The
caller has the run from ``mergehub.runs.selectors.get_run`` (which checks the user's team)."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from mergehub.accounts.models import Role
from mergehub.accounts.selectors import has_role
from mergehub.runs.models import MergeRun

from .models import HubPush
from .outputs import ModelFile, ModelUnavailable, published_files

PUSHES_SHOWN = 10


def model_files(run: MergeRun) -> tuple[list[ModelFile], str]:
    """(the run's published files, "") or ([], why there are none to hand out)."""
    try:
        return published_files(run), ""
    except ModelUnavailable as err:
        return [], str(err)


def pushes_for_run(run: MergeRun) -> QuerySet[HubPush]:
    """The run's pushes, newest first (without their logs)."""
    return HubPush.objects.filter(run=run).select_related("author").defer("log").order_by("-created_at", "-id")


def get_push(*, run: MergeRun, pk) -> HubPush:
    """Push ``pk`` of ``run``; Http404 for a push of another run (ids that do not belong together)."""
    push = HubPush.objects.filter(run=run, pk=pk).first()
    if push is None:
        raise Http404("No such push.")
    return push


def panel(*, run: MergeRun, user) -> dict:
    """What the report's "Get the model" panel shows (the caller checked access to ``run``)."""
    files, problem = model_files(run)
    return {"files": files, "problem": problem, "total_bytes": sum(f.size for f in files),
            "pushes": list(pushes_for_run(run)[:PUSHES_SHOWN]),
            "can_push": has_role(user=user, team=run.team, role=Role.MEMBER)}
