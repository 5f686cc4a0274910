"""Evaluation pages: the team's tasks (register, delete, train the demo family), evaluation
jobs (queue from a run or a checkpoint, detail, live part, cancel, retry) and sweeps (queue
from the merge form, list, detail with charts, live part, cancel, retry). Views parse input,
call a service or selector, and render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from mergehub.accounts.current_team import current_team
from mergehub.accounts.models import Role
from mergehub.accounts.selectors import has_role
from mergehub.engine.api import MergeHubError
from mergehub.registry.selectors import get_checkpoint
from mergehub.runs.forms import ImportConfigForm
from mergehub.runs.selectors import get_run
from mergehub.runs.views import merge_form_for
from mergehub.ui.form_errors import add_service_errors
from mergehub.ui.pagination import paginate

from . import selectors, services, sweeps, task_registry, training
from .charts import benchmark_chart, sweep_bytes_chart, sweep_deviation_chart, sweep_score_chart
from .forms import ChooseTasksForm, RegisterTaskForm

LOG_LINES_SHOWN = 300


def _errors(error) -> str:
    return str(error) if isinstance(error, MergeHubError) else " ".join(error.messages)


def _live(request, job, *, prefix: str, url_name: str):
    """htmx poll target while ``job`` is active (progress and log); once it is done, a reload
    of the page, which then shows the result and stops polling."""
    if not job.is_active:
        response = HttpResponse(status=204)
        response["HX-Refresh"] = "true"
        return response
    return render(request, "ui/_job_live.html", {
        "job": job, "log": (job.log or [])[-LOG_LINES_SHOWN:], "prefix": prefix,
        "live_url": reverse(url_name, args=[job.pk])})


# --- tasks ------------------------------------------------------------------------------------

@login_required
def task_list(request):
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    form = RegisterTaskForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            task = task_registry.register_task(team=team, user=request.user, **form.service_kwargs())
        except (ValidationError, MergeHubError) as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Registered task {task.name} ({task.n_examples} examples).")
            return redirect("evaluation:tasks")
    family_job = training.latest_family_job(team)
    return render(request, "evaluation/tasks.html", {
        "team": team, "form": form, "tasks": selectors.tasks_for(user=request.user, team=team),
        "family_job": family_job, "family_log": (family_job.log or [])[-LOG_LINES_SHOWN:] if family_job else [],
        "evaluations": selectors.evaluations_for(user=request.user, team=team)[:10],
        "can_edit": has_role(user=request.user, team=team, role=Role.MEMBER),
        "is_admin": has_role(user=request.user, team=team, role=Role.ADMIN)})


@login_required
@require_POST
def task_delete(request, pk):
    task = selectors.get_task(user=request.user, pk=pk)
    task_registry.delete_task(task=task, user=request.user)
    messages.success(request, f"Deleted task {task.name}; its scores are kept.")
    return redirect("evaluation:tasks")


@login_required
@require_POST
def family_train(request):
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    try:
        training.queue_family_training(team=team, user=request.user, seed=int(request.POST.get("seed") or 0))
    except (ValueError, TypeError):
        messages.error(request, "The seed must be a whole number.")
    except ValidationError as error:
        messages.error(request, _errors(error))
    else:
        messages.success(request, "Training the demo family in the background; its progress shows below.")
    return redirect("evaluation:tasks")


@login_required
def family_live(request, pk):
    return _live(request, selectors.get_family_job(user=request.user, pk=pk), prefix="family-job",
                 url_name="evaluation:family_live")


@login_required
@require_POST
def family_cancel(request, pk):
    job = selectors.get_family_job(user=request.user, pk=pk)
    try:
        training.cancel_family_training(job=job, user=request.user)
    except ValidationError as error:
        messages.error(request, _errors(error))
    return redirect("evaluation:tasks")


# --- evaluations ------------------------------------------------------------------------------

def _chosen_tasks(request, team):
    form = ChooseTasksForm(request.POST, tasks=selectors.tasks_for(user=request.user, team=team))
    if not form.is_valid():
        raise ValidationError("Choose at least one of your team's tasks.")
    return services.team_tasks(team, form.cleaned_data["tasks"])


@login_required
@require_POST
def evaluate_run(request, pk):
    run = get_run(user=request.user, pk=pk)
    try:
        job = services.queue_evaluation(user=request.user, team=run.team, tasks=_chosen_tasks(request, run.team),
                                        run=run, with_references=True, queue=request.POST.get("queue") or None)
    except ValidationError as error:
        messages.error(request, _errors(error))
    else:
        messages.success(request, f"Queued evaluation #{job.pk}.")
    return redirect(reverse("runs:detail", args=[run.pk]) + "#benchmark")


@login_required
@require_POST
def evaluate_checkpoint(request, pk):
    checkpoint = get_checkpoint(user=request.user, pk=pk)
    try:
        job = services.queue_evaluation(user=request.user, team=checkpoint.team,
                                        tasks=_chosen_tasks(request, checkpoint.team), checkpoint=checkpoint,
                                        queue=request.POST.get("queue") or None)
    except ValidationError as error:
        messages.error(request, _errors(error))
        return redirect(reverse("registry:detail", args=[checkpoint.pk]) + "#scores")
    messages.success(request, f"Queued evaluation #{job.pk}.")
    return redirect("evaluation:detail", pk=job.pk)


@login_required
def evaluation_detail(request, pk):
    job = selectors.get_evaluation(user=request.user, pk=pk)
    benchmark = selectors.benchmark_for_job(job)
    return render(request, "evaluation/detail.html", {
        "job": job, "benchmark": benchmark, "log": (job.log or [])[-LOG_LINES_SHOWN:],
        "chart": benchmark_chart(benchmark.tasks, benchmark.rows),
        "can_run": has_role(user=request.user, team=job.team, role=Role.MEMBER)})


@login_required
def evaluation_live(request, pk):
    return _live(request, selectors.get_evaluation(user=request.user, pk=pk), prefix="evaluation",
                 url_name="evaluation:live")


@login_required
@require_POST
def evaluation_cancel(request, pk):
    job = selectors.get_evaluation(user=request.user, pk=pk)
    try:
        services.cancel_evaluation(job=job, user=request.user)
    except ValidationError as error:
        messages.error(request, _errors(error))
    return redirect("evaluation:detail", pk=job.pk)


@login_required
@require_POST
def evaluation_retry(request, pk):
    job = selectors.get_evaluation(user=request.user, pk=pk)
    try:
        new_job = services.retry_evaluation(job=job, user=request.user)
    except ValidationError as error:
        messages.error(request, _errors(error))
        return redirect("evaluation:detail", pk=job.pk)
    return redirect("evaluation:detail", pk=new_job.pk)


# --- sweeps -----------------------------------------------------------------------------------

@login_required
def sweep_list(request):
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    pages = paginate(request, selectors.sweeps_for(user=request.user, team=team), filters={})
    return render(request, "evaluation/sweep_list.html", {"team": team, "sweeps": pages["page_obj"], **pages})


@login_required
@require_POST
def sweep_new(request):
    """The merge form, posted with its "Sweep budgets" button."""
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    form = merge_form_for(request, team, data=request.POST)
    if form.is_valid():
        try:
            sweep = sweeps.create_sweep(user=request.user, team=team, **form.sweep_kwargs(),
                                        form_data={k: v for k, v in request.POST.lists() if k != "csrfmiddlewaretoken"})
        except (ValidationError, MergeHubError) as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Queued sweep #{sweep.pk}.")
            return redirect("evaluation:sweep", pk=sweep.pk)
    return render(request, "runs/new.html", {"form": form, "team": team, "import_form": ImportConfigForm(),
                                             "can_run": has_role(user=request.user, team=team, role=Role.MEMBER)})


@login_required
def sweep_detail(request, pk):
    sweep = selectors.get_sweep(user=request.user, pk=pk)
    tasks = selectors.sweep_tasks(sweep)
    points = selectors.sweep_points(sweep)
    charts = [c for c in (sweep_score_chart(points, tasks, sweep.references or []),
                          sweep_deviation_chart(points), sweep_bytes_chart(points)) if c is not None]
    return render(request, "evaluation/sweep_detail.html", {
        "sweep": sweep, "points": points, "tasks": tasks, "charts": charts,
        "with_sketches": any(p["mode"] == selectors.SKETCH for p in points),
        "log": (sweep.log or [])[-LOG_LINES_SHOWN:],
        "can_run": has_role(user=request.user, team=sweep.team, role=Role.MEMBER)})


@login_required
def sweep_live(request, pk):
    return _live(request, selectors.get_sweep(user=request.user, pk=pk), prefix="sweep",
                 url_name="evaluation:sweep_live")


@login_required
@require_POST
def sweep_cancel(request, pk):
    sweep = selectors.get_sweep(user=request.user, pk=pk)
    try:
        sweeps.cancel_sweep(sweep=sweep, user=request.user)
    except ValidationError as error:
        messages.error(request, _errors(error))
    return redirect("evaluation:sweep", pk=sweep.pk)


@login_required
@require_POST
def sweep_retry(request, pk):
    sweep = selectors.get_sweep(user=request.user, pk=pk)
    try:
        new_sweep = sweeps.retry_sweep(sweep=sweep, user=request.user)
    except (ValidationError, MergeHubError) as error:
        messages.error(request, _errors(error))
        return redirect("evaluation:sweep", pk=sweep.pk)
    return redirect("evaluation:sweep", pk=new_sweep.pk)
