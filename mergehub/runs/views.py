"""Run pages: list with filters, merge form with live plan preview, detail with live progress
and report, cancel and retry, and runs compared side by side. Views parse input, call a
service or selector, and render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from mergehub.accounts.current_team import current_team
from mergehub.accounts.models import Role
from mergehub.accounts.selectors import has_role
from mergehub.engine.api import MergeHubError
from mergehub.evaluation.charts import benchmark_chart
from mergehub.evaluation.selectors import benchmark_for_run, tasks_for
from mergehub.registry.models import Checkpoint
from mergehub.registry.selectors import merge_choices_for
from mergehub.reviews import selectors as review_selectors
from mergehub.reviews.models import ReviewState
from mergehub.ui.form_errors import add_service_errors
from mergehub.ui.pagination import paginate

from . import report, selectors, services, yaml_config
from .compare_charts import compare_scores_chart
from .forms import ImportConfigForm, MergeForm, import_query, initial_from_query
from .models import MergeRun

LOG_LINES_SHOWN = 300
SEARCH_MAX_CHARS = 200  # of the run list's search box


# --- list -------------------------------------------------------------------------------------

@login_required
def run_list(request):
    team = current_team(request)
    status = request.GET.get("status", "")
    method = request.GET.get("method", "")
    author = request.GET.get("author", "")
    search = request.GET.get("q", "").strip()[:SEARCH_MAX_CHARS]
    review = request.GET.get("review", "")
    review = review if review in ReviewState.values else ""
    runs = (selectors.runs_for(user=request.user, team=team, status=status or None,
                               method=method or None, author=author or None, search=search)
            if team else MergeRun.objects.none())
    if review:
        runs = review_selectors.filter_runs_by_state(runs, review)
    authors = (get_user_model().objects.filter(memberships__team=team).order_by("username")
               if team else [])
    filters = {"status": status, "method": method, "author": author, "q": search, "review": review}
    pages = paginate(request, selectors.for_listing(runs), filters=filters)
    return render(request, "runs/list.html", {
        "team": team, "runs": pages["page_obj"], **pages, "statuses": MergeRun.Status.choices,
        "review_states": ReviewState.choices,
        "methods": selectors.methods_used(team, also=method) if team else [], "authors": authors, "filters": filters,
        "can_run": bool(team) and has_role(user=request.user, team=team, role=Role.MEMBER)})


@login_required
def compare(request):
    """Runs side by side (selectors.compare_runs); the permalink is ``?ids=3,5,8``. A form's
    repeated ``ids`` (the run list's checkboxes, a report's "compare with") is sent there."""
    values = request.GET.getlist("ids")
    if len(values) > 1:
        query = QueryDict(mutable=True)
        query["ids"] = ",".join(v.strip() for v in values if v.strip())
        return redirect(f"{reverse('runs:compare')}?{query.urlencode(safe=',')}")
    try:
        ids = selectors.compare_ids(values)
    except ValidationError as error:
        return render(request, "runs/compare.html", {"problem": " ".join(error.messages)}, status=400)
    comparison = selectors.compare_runs(user=request.user, ids=ids)
    return render(request, "runs/compare.html", {
        "comparison": comparison, "chart": compare_scores_chart(comparison.tasks, comparison.scores)})


# --- the merge form ---------------------------------------------------------------------------

def merge_form_for(request, team, data=None, initial=None) -> MergeForm:
    """The merge form for ``team`` (also posted to start a sweep: mergehub/evaluation/views.py)."""
    team_checkpoints = merge_choices_for(user=request.user, team=team)  # ready ones only
    bases = team_checkpoints.filter(role=Checkpoint.Role.BASE).order_by("name")

    def experts_for(base):
        if base.family_id is None:
            return team_checkpoints.none()
        return team_checkpoints.filter(role=Checkpoint.Role.EXPERT, family=base.family_id).order_by("name")

    return MergeForm(data, bases=bases, experts_for=experts_for, initial=initial,
                     tasks=tasks_for(user=request.user, team=team))


@login_required
def run_new(request):
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    form = merge_form_for(request, team, data=request.POST if request.method == "POST" else None,
                       initial=None if request.method == "POST" else initial_from_query(request.GET))
    if request.method == "POST" and form.is_valid():
        try:
            run = services.create_run(user=request.user, team=team, **form.run_kwargs())
        except (ValidationError, MergeHubError) as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Queued run #{run.pk}.")
            return redirect("runs:detail", pk=run.pk)
    return _render_new(request, team, form, ImportConfigForm())


def _render_new(request, team, form: MergeForm, import_form: ImportConfigForm):
    return render(request, "runs/new.html", {
        "form": form, "team": team, "import_form": import_form,
        "can_run": has_role(user=request.user, team=team, role=Role.MEMBER)})


@login_required
@require_POST
def import_yaml(request):
    """The merge form filled in from a pasted mergekit config whose models name the team's
    checkpoints; what the form cannot show (gradients, filter lists) is said in a message."""
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    import_form = ImportConfigForm(request.POST)
    if import_form.is_valid():
        text = import_form.cleaned_data["yaml"]
        try:
            inputs = yaml_config.inputs_from_config(team, text, field="yaml")
            services.check_inputs(team, inputs["base"], inputs["experts"])
        except (ValidationError, MergeHubError) as error:
            add_service_errors(import_form, error)
        else:
            query, notes = import_query(inputs, yaml_config.settings_from_config(text, field="yaml"))
            n = len(inputs["experts"])
            messages.success(request, f"Imported the config: {inputs['method']} of {n} expert{'s' if n != 1 else ''} "
                                      f"onto {inputs['base'].name}. Check the form, then start the merge.")
            for note in notes:
                messages.warning(request, note)
            return redirect(f"{reverse('runs:new')}?{query}")
    return _render_new(request, team, merge_form_for(request, team, initial={}), import_form)


@login_required
def operator_fields(request):
    """htmx: the operator-dependent part of the merge form, for the method and base chosen now.
    Values already typed are kept (as initial values, so no errors show for unfilled fields)."""
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    form = merge_form_for(request, team, initial=initial_from_query(request.GET))
    response = render(request, "runs/_operator_fields.html", {"form": form})
    response["HX-Trigger"] = "fields-swapped"  # the plan preview listens and refreshes
    return response


@login_required
@require_POST
def preview(request):
    """htmx: the plan for the form's current values, from the index only (reads no weights)."""
    team = current_team(request)
    if team is None:
        return render(request, "accounts/no_team.html", status=403)
    form = merge_form_for(request, team, data=request.POST)
    plan, problems = None, []
    if form.is_valid():
        try:
            plan = services.preview_plan(user=request.user, team=team, **form.merge_inputs())
        except (ValidationError, MergeHubError) as error:
            problems = _messages_of(error)
    else:
        problems = [f"{_label(form, field)}: {' '.join(errs)}" if field != "__all__" else " ".join(errs)
                    for field, errs in form.errors.items()]
    names = {c.path: c.name for c in form.chosen_experts} if plan is not None else {}
    return render(request, "runs/_preview.html", {**report.plan_preview(plan, names), "problems": problems})


def _messages_of(error) -> list[str]:
    if isinstance(error, MergeHubError):
        return [str(error)]
    return list(error.messages)


def _label(form, field: str) -> str:
    if field in form.fields:
        label = form.fields[field].label or field
        if field.startswith("expert_") and "__" in field:
            pk = field.split("__")[0].removeprefix("expert_")
            names = {str(c.pk): c.name for c in form.candidates}
            return f"{names.get(pk, 'expert')} {label}"
        return str(label)
    return field


# --- detail, live part, actions ---------------------------------------------------------------

@login_required
def run_detail(request, pk):
    run = selectors.get_run(user=request.user, pk=pk)
    return render(request, "runs/detail.html", {
        "run": run, **report.run_report(user=request.user, run=run),
        "config_yaml": yaml_config.config_yaml(run),
        "log": (run.log or [])[-LOG_LINES_SHOWN:],
        **_benchmark_context(request, run),
        "compare_with": selectors.compare_candidates(user=request.user, run=run),
        "review_state": review_selectors.state_of(run),
        "can_run": has_role(user=request.user, team=run.team, role=Role.MEMBER)})


def _benchmark_context(request, run: MergeRun) -> dict:
    """The report's benchmark section: the newest evaluation's scores and chart, and the
    team's tasks for the "evaluate" form."""
    benchmark = benchmark_for_run(run)
    return {"benchmark": benchmark, "benchmark_chart": benchmark_chart(benchmark.tasks, benchmark.rows),
            "team_tasks": tasks_for(user=request.user, team=run.team)}


@login_required
def config_yaml(request, pk):
    """The run as mergekit YAML, as a download (runs.yaml_config.config_yaml)."""
    run = selectors.get_run(user=request.user, pk=pk)
    response = HttpResponse(yaml_config.config_yaml(run), content_type="text/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{yaml_config.config_filename(run)}"'
    return response


@login_required
def run_live(request, pk):
    """htmx poll target (every second while the run is queued or running). Once the run has
    finished it tells htmx to reload the page, which then shows the report and stops polling."""
    run = selectors.get_run(user=request.user, pk=pk)
    if not run.is_active:
        response = HttpResponse(status=204)
        response["HX-Refresh"] = "true"
        return response
    return render(request, "runs/_live.html", {"run": run, "log": (run.log or [])[-LOG_LINES_SHOWN:]})


@login_required
@require_POST
def cancel(request, pk):
    run = selectors.get_run(user=request.user, pk=pk)
    try:
        run = services.cancel_run(run=run, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Cancelled." if run.status == MergeRun.Status.CANCELLED
                         else "Cancel requested; the run stops at its next block.")
    return redirect("runs:detail", pk=run.pk)


@login_required
@require_POST
def notes(request, pk):
    """Save the run's tags and note from the form on its page (team members and admins)."""
    run = selectors.get_run(user=request.user, pk=pk)
    try:
        services.set_run_notes(run=run, user=request.user, tags=request.POST.get("tags", ""),
                               note=request.POST.get("note", ""))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Saved the tags and note.")
    return redirect(f"{reverse('runs:detail', args=[run.pk])}#run-notes")


@login_required
@require_POST
def retry(request, pk):
    run = selectors.get_run(user=request.user, pk=pk)
    try:
        new_run = services.retry_run(run=run, user=request.user)
    except (ValidationError, MergeHubError) as error:
        messages.error(request, " ".join(_messages_of(error)))
        return redirect("runs:detail", pk=run.pk)
    messages.success(request, f"Queued run #{new_run.pk}, a retry of #{run.pk}.")
    return redirect("runs:detail", pk=new_run.pk)
