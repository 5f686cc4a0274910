"""Template helpers for evaluation pages, and the team page's task list."""

from __future__ import annotations

from django import template

from ..models import EvalTask

register = template.Library()


@register.filter
def get_item(mapping, key):
    """``mapping[key]``, or None (templates cannot index a dict by a variable)."""
    return (mapping or {}).get(key)


@register.inclusion_tag("evaluation/_team_tasks.html")
def team_tasks(team):
    """The team page's list of tasks (the caller has checked the user belongs to ``team``)."""
    return {"tasks": EvalTask.objects.filter(team=team).order_by("name")}


@register.inclusion_tag("evaluation/_checkpoint_scores.html", takes_context=True)
def checkpoint_scores(context, checkpoint):
    """The checkpoint page's scores: its newest stored score per task, its newest evaluation,
    and a form to evaluate it (the page's view has checked access to ``checkpoint``)."""
    from mergehub.accounts.models import Role
    from mergehub.accounts.selectors import has_role

    from ..selectors import checkpoint_scores as scores_of, latest_checkpoint_evaluation

    request = context["request"]
    results = scores_of(checkpoint)
    return {"checkpoint": checkpoint, "results": sorted(results.values(), key=lambda r: r.task_name),
            "job": latest_checkpoint_evaluation(checkpoint), "csrf_token": context.get("csrf_token"),
            "tasks": EvalTask.objects.filter(team=checkpoint.team).order_by("name"),
            "can_run": has_role(user=request.user, team=checkpoint.team, role=Role.MEMBER)}


@register.inclusion_tag("evaluation/_training_notice.html")
def family_training_notice(team):
    """A line on the dashboard and the checkpoint list while the team's demo family trains."""
    from ..models import FamilyJob

    job = (FamilyJob.objects.filter(team=team, status__in=FamilyJob.ACTIVE).order_by("-created_at").first()
           if team is not None else None)
    return {"job": job}
