"""Writes for quality-versus-budget sweeps: validate one merge configuration and a list of
budgets, queue the sweep, cancel, retry. Inputs are checked as a merge's are
(runs.services), and every budget must parse before anything is queued."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.engine import api as engine
from mergehub.jobs import dispatch
from mergehub.jobs.control import request_cancel
from mergehub.jobs.joblog import log_entry
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import block_size as default_block_size
from mergehub.runs import services as runs

from .models import EvalTask, SweepJob

MAX_BUDGETS = 12
DEFAULT_BUDGETS = "0.05, 0.1, 0.25, 0.5, 1"
FULL = "1"


def parse_budgets(text: str) -> list[str]:
    """Budgets as typed ("0.1, 0.25, 512MB"), checked, without repeats, with the full budget
    added as the reference when it is missing; ordered as the engine sizes them."""
    items = [b.strip() for b in str(text or "").replace(";", ",").split(",") if b.strip()]
    if not items:
        raise ValidationError({"sweep_budgets": f"List the budgets to sweep, e.g. {DEFAULT_BUDGETS}."})
    parsed = {}
    for item in items:
        try:
            parsed[item] = engine.parse_budget(item)
        except engine.BudgetError as err:
            raise ValidationError({"sweep_budgets": f"{item}: {err}"}) from None
    if not any(b.fraction == 1.0 for b in parsed.values() if b.fraction is not None):
        parsed[FULL] = engine.parse_budget(FULL)
    if len(parsed) > MAX_BUDGETS:
        raise ValidationError({"sweep_budgets": f"At most {MAX_BUDGETS} budgets a sweep (with the full one)."})
    return list(parsed)


def create_sweep(*, user, team: Team, name: str = "", method: str, base: Checkpoint, experts: list,
                 parameters: dict[str, Any] | None = None, budgets: str, seed: int = 0,
                 dtype: str | None = None, out_dtype: str | None = None, tasks: list[EvalTask] | None = None,
                 block_size: int | None = None, queue: str | None = None, form_data: dict | None = None,
                 sketch_rank=None) -> SweepJob:
    """Validate and queue a sweep of one merge configuration over ``budgets`` (text). With
    ``tasks``, each budget's merge is also written and scored on them. ``sketch_rank`` as a
    merge's (None: the method's default); with sketches on, each budget is swept both with
    sketches and with exact blocks only."""
    require_role(user=user, team=team, role=Role.MEMBER, action="start sweeps")
    config = runs.checked_config(team=team, method=method, base=base, experts=experts, parameters=parameters,
                                 dtype=dtype, out_dtype=out_dtype)
    budget_list = parse_budgets(budgets)
    seed = runs.check_seed(seed)
    sketch_rank = runs.check_sketch_rank(sketch_rank)
    queue = runs.check_queue(queue)
    task_ids = runs.check_task_ids(team, tasks)
    block_size = block_size or default_block_size()
    # the experts are indexed (with the sketches asked for) and the config plans
    runs.plan_config(config, FULL, block_size, seed, sketch_rank=sketch_rank, experts=[c for c, _ in experts])
    name = (name or "").strip() or f"{method}: {len(experts)} expert{'s' if len(experts) != 1 else ''} over {len(budget_list)} budgets"
    return _insert(team=team, author=user, name=name, method=method, config=config, base=base,
                   experts=[c for c, _ in experts], budgets=budget_list, seed=seed, block_size=block_size,
                   sketch_rank=sketch_rank, task_ids=task_ids, queue=queue, form_data=form_data or {})


@transaction.atomic
def _insert(*, team, author, name, method, config, base, experts, budgets, seed, block_size, sketch_rank,
            task_ids, queue, form_data, retry_of: SweepJob | None = None) -> SweepJob:
    sweep = SweepJob.objects.create(
        team=team, author=author, name=name[:200], method=method, config=config, base=base, budgets=budgets,
        seed=seed, block_size=block_size, sketch_rank=sketch_rank, queue=queue, stage="queued", form_data=form_data, retry_of=retry_of,
        log=[log_entry(f"queued by {author} on the {queue} queue: budgets {', '.join(budgets)}"
                       + (f" (a retry of sweep #{retry_of.pk})" if retry_of else ""))])
    sweep.experts.set(experts)
    sweep.tasks.set(EvalTask.objects.filter(team=team, pk__in=task_ids))
    dispatch.wake_on_commit(sweep)
    return sweep


def cancel_sweep(*, sweep: SweepJob, user) -> SweepJob:
    require_role(user=user, team=sweep.team, role=Role.MEMBER, action="cancel sweeps")
    return request_cancel(SweepJob, sweep.pk, by=user, label=f"Sweep #{sweep.pk}")


def retry_sweep(*, sweep: SweepJob, user) -> SweepJob:
    """The same sweep queued again (inputs checked again: an expert may have changed)."""
    require_role(user=user, team=sweep.team, role=Role.MEMBER, action="retry sweeps")
    if sweep.is_active:
        raise ValidationError(f"Sweep #{sweep.pk} is still {sweep.status}; cancel it or wait before retrying.")
    ids = set((sweep.config.get("checkpoint_ids") or {}).values())
    found = {c.pk: c for c in Checkpoint.objects.filter(pk__in=ids, team=sweep.team)}
    if ids - set(found) or sweep.base_id is None:
        raise ValidationError("A checkpoint of this sweep was deleted; start a new sweep instead.")
    runs.check_inputs(sweep.team, found[sweep.base_id], [(found[pk], {}) for pk in sweep.experts.values_list("pk", flat=True)])
    return _insert(team=sweep.team, author=user, name=sweep.name, method=sweep.method, config=sweep.config,
                   base=found[sweep.base_id], experts=list(sweep.experts.all()), budgets=sweep.budgets,
                   seed=sweep.seed, block_size=sweep.block_size, sketch_rank=sweep.sketch_rank,
                   task_ids=list(sweep.tasks.values_list("pk", flat=True)),
                   queue=runs.check_queue(sweep.queue), form_data=sweep.form_data, retry_of=sweep)
