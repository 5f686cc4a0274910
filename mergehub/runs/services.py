"""Writes for merge runs: build and validate a config, plan it, queue it, cancel, retry, reap.

Nothing is queued until the config parses and plans: every bad input (unknown parameters,
budget ≤ 0, experts not indexed, another family's expert, a sketch rank the index does not
hold) is a ValidationError keyed by the form field at fault, raised before any row is written.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404

from mergehub.accounts.models import Role, Team
from mergehub.accounts.services import require_role
from mergehub.audit.models import AuditEvent
from mergehub.audit.services import record
from mergehub.engine import api as engine
from mergehub.jobs import dispatch, joblog
from mergehub.jobs.control import request_cancel
from mergehub.registry import pinning
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import block_size as default_block_size
from mergehub.registry.roots import catalog_dir

from .models import MergeRun
from .selectors import run_for_idempotency_key

log = logging.getLogger(__name__)
Status = MergeRun.Status
ExpertSpec = tuple[Checkpoint, dict[str, Any]]
MAX_SEED = 2**63 - 1

# Which form field an engine error is about.
ERROR_FIELDS: list[tuple[type[Exception], str]] = [
    (engine.BudgetError, "budget"),
    (engine.NotIndexed, "experts"),
    (engine.MismatchedCheckpoints, "experts"),
    (engine.ConfigError, "parameters"),
]


# --- config and plan --------------------------------------------------------------------------

def _clean_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Drop unset values (blank form fields) so the operator's defaults apply."""
    return {k: v for k, v in (params or {}).items() if v is not None and v != ""}


def build_config(*, method: str, base: Checkpoint, experts: list[ExpertSpec],
                 parameters: dict[str, Any] | None = None, dtype: str | None = None,
                 out_dtype: str | None = None) -> dict:
    """The mergekit-style mapping for a merge of ``experts`` onto ``base``.

    Model paths are the checkpoints' resolved directories; ``checkpoint_ids`` maps each path
    back to its row (MergeHub's own key, removed before the engine parses the mapping).
    """
    mapping: dict[str, Any] = {
        "merge_method": method,
        "base_model": base.path,
        "models": [{"model": ckpt.path, "parameters": _clean_params(params)} for ckpt, params in experts],
    }
    global_params = _clean_params(parameters)
    if global_params:
        mapping["parameters"] = global_params
    if dtype:
        mapping["dtype"] = dtype
    if out_dtype:
        mapping["out_dtype"] = out_dtype
    mapping["checkpoint_ids"] = {base.path: base.pk, **{ckpt.path: ckpt.pk for ckpt, _ in experts}}
    return mapping


def engine_mapping(config: dict) -> dict:
    """The config as the engine reads it (MergeHub's bookkeeping keys removed)."""
    return {k: v for k, v in config.items() if k != "checkpoint_ids"}


def _as_validation_error(err: engine.MergeHubError) -> ValidationError:
    for cls, field in ERROR_FIELDS:
        if isinstance(err, cls):
            return ValidationError({field: str(err)})
    return ValidationError(str(err))


def check_inputs(team: Team, base: Checkpoint | None, experts: list[ExpertSpec]) -> None:
    """Inputs must be the team's own, ready, and of one family."""
    if base is None:
        raise ValidationError({"base": "Choose a base model."})
    for ckpt in [base, *(c for c, _ in experts)]:
        if ckpt.team_id != team.pk:
            raise Http404("No such checkpoint.")  # another team's object: do not leak it
    if base.role != Checkpoint.Role.BASE:
        raise ValidationError({"base": f"{base.name} is registered as an expert, not a base."})
    if not base.is_ready:
        raise ValidationError({"base": f"{base.name} is not ready yet ({base.index_status})."})
    if not experts:
        raise ValidationError({"experts": "Choose at least one expert."})
    seen = set()
    for ckpt, _ in experts:
        if ckpt.pk in seen:
            raise ValidationError({"experts": f"{ckpt.name} is listed twice; list each expert once."})
        seen.add(ckpt.pk)
        if ckpt.role != Checkpoint.Role.EXPERT:
            raise ValidationError({"experts": f"{ckpt.name} is a base, not an expert."})
        if ckpt.family_id != base.family_id:
            raise ValidationError({"experts": f"{ckpt.name} belongs to another family than {base.name}."})
        if not ckpt.is_ready:
            state = "failed" if ckpt.index_status == Checkpoint.IndexStatus.FAILED else "not indexed yet"
            raise ValidationError({"experts": f"{ckpt.name} is {state}; wait for its index (or re-index it)."})
    _check_pins(base, "base")
    for ckpt, _ in experts:
        _check_pins(ckpt, "experts")


def _check_pins(checkpoint: Checkpoint, field: str) -> None:
    """The files must still be the ones registered (the worker checks again before merging)."""
    try:
        pinning.verify_checkpoint(checkpoint)
    except engine.MergeHubError as err:
        raise ValidationError({field: str(err)}) from None


def check_budget(budget) -> str:
    text = str(budget if budget is not None else "").strip()
    if not text:
        raise ValidationError({"budget": "Enter a budget: a fraction like 0.5 or a size like 512MB."})
    return text


def check_sketch_rank(value) -> int | None:
    """A sketch rank as asked for (form, API): blank is None, which lets the method's default
    apply (engine.merge_sketch_rank); anything else follows the engine's rule, a whole number
    from 0 (off) to 256."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return engine.check_sketch_rank(value.strip() if isinstance(value, str) else value)
    except engine.ConfigError as err:
        message = str(err)
        raise ValidationError({"sketch_rank": message[:1].upper() + message[1:] + "."}) from None


def _check_indexed_rank(rank: int, requested: int | None, method: str, experts) -> None:
    """Sketches of ``rank`` must be in the experts' index: an expert indexed with sketches of a
    lower rank (or none) has none to give (the catalog holds the index job's sketches, each of
    which also holds every lower rank). Said on the sketch rank field, with what would do."""
    if not rank:
        return
    short: dict[int, list[str]] = {}
    for ckpt in experts:
        indexed = (ckpt.index_stats or {}).get("sketch_rank")
        if indexed is not None and int(indexed) < rank:
            short.setdefault(int(indexed), []).append(ckpt.name)
    if not short:
        return
    asked = f"Sketch rank {rank}" + ("" if requested is not None else f" (the default for {method})")
    found = "; ".join(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} indexed "
                      + (f"with sketches up to rank {r}" if r else "without sketches") for r, names in sorted(short.items()))
    highest = min(short)
    choice = (f"set it to {highest} or less, or to 0 for exact blocks only" if highest
              else "set it to 0 for exact blocks only, or re-index the experts")
    raise ValidationError({"sketch_rank": f"{asked}: {found}. A plan can only use the sketches the index made: "
                                          f"{choice}."})


def plan_config(config: dict, budget: str, block_size: int | None, seed: int = 0, *,
                sketch_rank: int | None = None, experts=()) -> dict:
    """The engine's plan (Plan.to_dict()) of ``config``; ``sketch_rank`` as asked for (None: the
    method's default), checked against the index of ``experts`` (Checkpoint rows)."""
    try:
        parsed = engine.load_config_mapping(engine_mapping(config))
        rank = engine.merge_sketch_rank(parsed, sketch_rank)
        _check_indexed_rank(rank, sketch_rank, parsed.merge_method, experts)
        report = engine.plan_merge(parsed, budget=budget, catalog_dir=catalog_dir(),
                                   block_size=block_size, seed=seed, sketch_rank=rank)
    except engine.MergeHubError as err:
        raise _as_validation_error(err) from None
    return report.to_dict()


def checked_config(*, team: Team, method: str, base: Checkpoint, experts: list[ExpertSpec],
                   parameters: dict[str, Any] | None = None, dtype: str | None = None,
                   out_dtype: str | None = None) -> dict:
    """The config for these inputs once they pass check_inputs (used by sweeps too)."""
    check_inputs(team, base, experts)
    return build_config(method=method, base=base, experts=experts, parameters=parameters,
                        dtype=dtype, out_dtype=out_dtype)


def preview_plan(*, user, team: Team, method: str, base: Checkpoint, experts: list[ExpertSpec],
                 parameters: dict[str, Any] | None = None, budget, block_size: int | None = None,
                 dtype: str | None = None, out_dtype: str | None = None, sketch_rank=None) -> dict:
    """The engine's plan for these inputs (PlanReport.to_dict()); computed from the index only."""
    require_role(user=user, team=team, role=Role.VIEWER, action="preview merges")
    check_inputs(team, base, experts)
    budget = check_budget(budget)
    sketch_rank = check_sketch_rank(sketch_rank)
    config = build_config(method=method, base=base, experts=experts, parameters=parameters,
                          dtype=dtype, out_dtype=out_dtype)
    return plan_config(config, budget, block_size or default_block_size(), sketch_rank=sketch_rank,
                       experts=[c for c, _ in experts])


# --- queueing ---------------------------------------------------------------------------------

def check_queue(queue: str | None) -> str:
    queue = queue or settings.MERGEHUB_QUEUES[0]
    if queue not in settings.MERGEHUB_QUEUES:
        raise ValidationError({"queue": f"No {queue!r} queue here; choose one of {', '.join(settings.MERGEHUB_QUEUES)}."})
    return queue


def _default_name(method: str, n_experts: int, budget: str) -> str:
    return f"{method}: {n_experts} expert{'s' if n_experts != 1 else ''} at budget {budget}"


def check_seed(seed) -> int:
    try:
        value = int(seed if seed is not None else 0)
    except (TypeError, ValueError):
        raise ValidationError({"seed": f"Seed must be a whole number, not {seed!r}."}) from None
    if not 0 <= value <= MAX_SEED:
        raise ValidationError({"seed": f"Seed must be between 0 and {MAX_SEED}."})
    return value


def create_run(*, user, team: Team, name: str = "", method: str, base: Checkpoint,
               experts: list[ExpertSpec], parameters: dict[str, Any] | None = None, budget,
               seed: int = 0, dtype: str | None = None, out_dtype: str | None = None,
               measure_deviation: bool = False, block_size: int | None = None,
               queue: str | None = None, evaluate_tasks: list | None = None,
               idempotency_key: str = "", sketch_rank=None) -> MergeRun:
    """Validate, plan and queue a merge. Members and admins only. The plan is made before the
    write transaction (it reads the catalog, which can take a while), so the write is short.
    ``evaluate_tasks`` (the team's evaluation tasks) are scored on the merged model once it
    succeeds (mergehub/evaluation/receivers.py). ``idempotency_key``: see create_run_once.
    ``sketch_rank``: None (the method's default), 0 (off) or the rank of the sketches to use."""
    require_role(user=user, team=team, role=Role.MEMBER, action="start merges")
    check_inputs(team, base, experts)
    budget = check_budget(budget)
    seed = check_seed(seed)
    sketch_rank = check_sketch_rank(sketch_rank)
    queue = check_queue(queue)
    block_size = block_size or default_block_size()
    config = build_config(method=method, base=base, experts=experts, parameters=parameters,
                          dtype=dtype, out_dtype=out_dtype)
    task_ids = check_task_ids(team, evaluate_tasks)
    plan = plan_config(config, budget, block_size, seed, sketch_rank=sketch_rank, experts=[c for c, _ in experts])
    return _insert(team=team, author=user, name=(name or "").strip() or _default_name(method, len(experts), budget),
                   method=method, config=config, base=base, experts=[c for c, _ in experts], budget=budget,
                   seed=seed, block_size=block_size, sketch_rank=sketch_rank,
                   measure_deviation=bool(measure_deviation), plan=plan,
                   queue=queue, evaluate_task_ids=task_ids, idempotency_key=idempotency_key)


MAX_IDEMPOTENCY_KEY = 200


def check_idempotency_key(key) -> str:
    key = str(key or "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY or any(not ch.isprintable() for ch in key):
        raise ValidationError({"idempotency_key": f"An Idempotency-Key is at most {MAX_IDEMPOTENCY_KEY} "
                                                  "printable characters."})
    return key


def create_run_once(*, user, team: Team, idempotency_key: str = "", **kwargs) -> tuple[MergeRun, bool]:
    """create_run, at most once per (team, user, idempotency key): a request sent again with the
    same key gets the first run back. Returns (run, created). Without a key, always creates."""
    key = check_idempotency_key(idempotency_key)
    earlier = run_for_idempotency_key(team=team, user=user, key=key)
    if earlier is not None:
        return earlier, False
    try:
        return create_run(user=user, team=team, idempotency_key=key, **kwargs), True
    except IntegrityError:
        earlier = run_for_idempotency_key(team=team, user=user, key=key)  # the same request, sent twice at once
        if earlier is None:
            raise
        return earlier, False


def check_task_ids(team: Team, tasks: list | None) -> list[int]:
    """The ids of evaluation tasks chosen for a run; another team's task is a 404."""
    if any(task.team_id != team.pk for task in tasks or []):
        raise Http404("No such task.")
    return sorted({task.pk for task in tasks or []})


@transaction.atomic
def _insert(*, team, author, name, method, config, base, experts, budget, seed, block_size, sketch_rank,
            measure_deviation, plan, queue, evaluate_task_ids: list[int], retry_of: MergeRun | None = None,
            idempotency_key: str = "") -> MergeRun:
    run = MergeRun.objects.create(
        team=team, author=author, name=name[:200], method=method, config=config, base=base,
        budget=budget, seed=seed, block_size=block_size, sketch_rank=sketch_rank,
        measure_deviation=measure_deviation,
        plan=plan, status=Status.QUEUED, stage="queued", queue=queue, retry_of=retry_of,
        evaluate_task_ids=evaluate_task_ids, idempotency_key=idempotency_key,
        log=[joblog.log_entry(f"queued by {author} on the {queue} queue"
                              + (f" as a retry of run #{retry_of.pk}" if retry_of else ""))],
    )
    run.experts.set(experts)
    dispatch.wake_on_commit(run)
    record(team=team, actor=author, action=AuditEvent.Action.RUN_RETRIED if retry_of else AuditEvent.Action.RUN_STARTED,
           target=run, label=run.name, details={"method": method, "budget": budget, **({"retry_of": retry_of.pk} if retry_of else {})})
    return run


@transaction.atomic
def cancel_run(*, run: MergeRun, user) -> MergeRun:
    """A queued run is cancelled at once; a running one stops at its next block."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="cancel merges")
    run = request_cancel(MergeRun, run.pk, by=user, label=f"Run #{run.pk}")
    record(team=run.team, actor=user, action=AuditEvent.Action.RUN_CANCELLED, target=run, label=run.name,
           details={"status": run.status})
    return run


def retry_run(*, run: MergeRun, user) -> MergeRun:
    """A new queued run with the same config, budget, seed, sketch rank and queue (re-planned:
    the index may have moved)."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="retry merges")
    if run.is_active:
        raise ValidationError(f"Run #{run.pk} is still {run.status}; cancel it or wait before retrying.")
    ids = set((run.config.get("checkpoint_ids") or {}).values())
    found = {c.pk: c for c in Checkpoint.objects.filter(pk__in=ids, team=run.team)}
    missing = ids - set(found)
    if missing or run.base_id is None:
        raise ValidationError("A checkpoint of this run was deleted; start a new merge instead.")
    base = found[run.base_id]
    experts = [(found[pk], {}) for pk in run.experts.values_list("pk", flat=True)]
    check_inputs(run.team, base, experts)
    plan = plan_config(run.config, run.budget, run.block_size, run.seed, sketch_rank=run.sketch_rank,
                       experts=[c for c, _ in experts])
    return _insert(team=run.team, author=user, name=run.name, method=run.method, config=run.config,
                   base=base, experts=[c for c, _ in experts], budget=run.budget, seed=run.seed,
                   block_size=run.block_size, sketch_rank=run.sketch_rank,
                   measure_deviation=run.measure_deviation, plan=plan,
                   queue=check_queue(run.queue), evaluate_task_ids=run.evaluate_task_ids, retry_of=run)


# --- the team's own labels: tags and a note ----------------------------------------------------

TAG_MAX_CHARS = 40
TAGS_MAX = 10  # TAGS_MAX × (TAG_MAX_CHARS + 1) fits MergeRun.tags
NOTE_MAX_CHARS = 5000


def normalise_tags(tags: str | list[str] | None) -> str:
    """Tags as stored in ``MergeRun.tags``: given as a list or as text separated by commas or
    new lines; each one trimmed, inner white space made one space, lower case; empty ones and
    repeats dropped (the first kept, in order); joined by commas. ValidationError (on "tags")
    for a tag over TAG_MAX_CHARS characters or more than TAGS_MAX tags."""
    if tags is None:
        return ""
    parts = tags if isinstance(tags, (list, tuple)) else str(tags).replace("\n", ",").split(",")
    seen: list[str] = []
    for part in parts:
        tag = " ".join(str(part).replace(",", " ").split()).lower()
        if not tag or tag in seen:
            continue
        if len(tag) > TAG_MAX_CHARS:
            raise ValidationError({"tags": f"A tag has at most {TAG_MAX_CHARS} characters; "
                                           f"{tag[:TAG_MAX_CHARS]}… has {len(tag)}."})
        seen.append(tag)
    if len(seen) > TAGS_MAX:
        raise ValidationError({"tags": f"A run has at most {TAGS_MAX} tags; these are {len(seen)}."})
    return ",".join(seen)


def normalise_note(note: str | None) -> str:
    """The note as stored: plain text (shown escaped, never as HTML), line ends made "\\n",
    NUL characters dropped (PostgreSQL refuses them), trimmed; at most NOTE_MAX_CHARS."""
    text = str(note or "").replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
    if len(text) > NOTE_MAX_CHARS:
        raise ValidationError({"note": f"A note has at most {NOTE_MAX_CHARS} characters; this one has {len(text)}."})
    return text


def set_run_notes(*, run: MergeRun, user, tags: str | list[str] | None, note: str | None) -> MergeRun:
    """Replace a run's tags and note (team members and admins; at any point of the run's life).
    Only these two columns are written, so a worker updating the run meanwhile loses nothing."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="edit run tags and notes")
    tags, note = normalise_tags(tags), normalise_note(note)
    MergeRun.objects.filter(pk=run.pk).update(tags=tags, note=note)
    run.tags, run.note = tags, note
    return run
