"""The isolation matrix's effects (whether an action changed acme's state), request data and
checks, one function per kind of object (tests/pages/test_isolation_matrix.py)."""

from __future__ import annotations

from django.test import Client
from django.urls import reverse

from tests.pages.conftest import merge_post
from tests.pages.isolation_world import World

# --- the effects an action may have on acme ---------------------------------------------------

def _mallory_in_acme(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Membership

    return Membership.objects.filter(team=w.acme, user=w.users["other_admin"]).exists()


def _bobs_membership(w: World) -> list:
    from mergehub.accounts.models import Membership

    return [w.acme.slug, Membership.objects.get(team=w.acme, user=w.users["viewer"]).pk]


def _self_approval_allowed(w: World, client: Client) -> bool:
    w.acme.refresh_from_db()
    return w.acme.allow_self_approval


def _review_changed(w: World, client: Client) -> bool:
    from mergehub.reviews.models import Entry

    return Entry.objects.filter(run=w.succeeded_run).exclude(pk=w.comment.pk).exists()


def _comment_deleted(w: World, client: Client) -> bool:
    from mergehub.reviews.models import Entry

    return not Entry.objects.filter(pk=w.comment.pk).exists()


def _review_page(w: World) -> str:
    return reverse("runs:detail", args=[w.succeeded_run.pk]) + "#review"


def _bob_promoted(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Membership

    return Membership.objects.get(team=w.acme, user=w.users["viewer"]).role != "viewer"


def _bob_removed(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Membership

    return not Membership.objects.filter(team=w.acme, user=w.users["viewer"]).exists()


def _acme_lost_a_member(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Membership

    return Membership.objects.filter(team=w.acme).count() != 3


def _matrix_team_created(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Team

    return Team.objects.filter(slug="matrix-team").exists()


def _new_token(w: World, client: Client) -> bool:
    from mergehub.api.models import ApiToken

    return ApiToken.objects.count() != w.token_count


def _token_revoked(w: World, client: Client) -> bool:
    w.token.refresh_from_db()
    return w.token.revoked_at is not None


def _new_checkpoint(w: World, client: Client) -> bool:
    from mergehub.registry.models import Checkpoint

    return (Checkpoint.objects.filter(name="matrix-expert").exists()
            or Checkpoint.objects.count() != w.checkpoint_count)


def _new_index_job(w: World, client: Client) -> bool:
    from mergehub.registry.models import IndexJob

    return IndexJob.objects.count() != w.index_job_count


def _active_job_cancelled(w: World, client: Client) -> bool:
    w.active_job.refresh_from_db()
    return w.active_job.status != "queued" or w.active_job.cancel_requested


def _index_retried(w: World, client: Client) -> bool:
    from mergehub.registry.models import IndexJob

    return IndexJob.objects.filter(retry_of=w.done_job).exists() or _new_index_job(w, client)


def _checkpoint_deleted(w: World, client: Client) -> bool:
    from mergehub.registry.models import Checkpoint

    return Checkpoint.objects.count() != w.checkpoint_count


def _run_notes_changed(w: World, client: Client) -> bool:
    w.queued_run.refresh_from_db()
    return (w.queued_run.tags, w.queued_run.note) != ("", "")


def _new_run(w: World, client: Client) -> bool:
    from mergehub.runs.models import MergeRun

    return MergeRun.objects.count() != w.run_count


def _queued_run_cancelled(w: World, client: Client) -> bool:
    w.queued_run.refresh_from_db()
    return w.queued_run.status != "queued" or w.queued_run.cancel_requested


def _run_retried(w: World, client: Client) -> bool:
    from mergehub.runs.models import MergeRun

    return MergeRun.objects.filter(retry_of=w.cancelled_run).exists() or _new_run(w, client)


def _new_task(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import EvalTask

    return EvalTask.objects.filter(team=w.acme).count() != w.task_count - 1  # rival's is the other


def _task_deleted(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import EvalTask

    return not EvalTask.objects.filter(pk=w.task.pk).exists()


def _new_family_job(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import FamilyJob

    return FamilyJob.objects.filter(team=w.acme).count() != w.family_job_count  # every one is acme's


def _family_job_cancelled(w: World, client: Client) -> bool:
    w.family_job.refresh_from_db()
    return w.family_job.status != "queued" or w.family_job.cancel_requested


def _new_evaluation(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import EvaluationJob

    return EvaluationJob.objects.count() != w.evaluation_count


def _evaluation_cancelled(w: World, client: Client) -> bool:
    w.queued_evaluation.refresh_from_db()
    return w.queued_evaluation.status != "queued" or w.queued_evaluation.cancel_requested


def _evaluation_retried(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import EvaluationJob

    return EvaluationJob.objects.filter(retry_of=w.cancelled_evaluation).exists() or _new_evaluation(w, client)


def _new_sweep(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import SweepJob

    return SweepJob.objects.count() != w.sweep_count


def _sweep_cancelled(w: World, client: Client) -> bool:
    w.queued_sweep.refresh_from_db()
    return w.queued_sweep.status != "queued" or w.queued_sweep.cancel_requested


def _sweep_retried(w: World, client: Client) -> bool:
    from mergehub.evaluation.models import SweepJob

    return SweepJob.objects.filter(retry_of=w.cancelled_sweep).exists() or _new_sweep(w, client)


def _working_in_acme(w: World, client: Client) -> bool:
    return client.session.get("mergehub_team") == "acme"


def _preview_check(w: World, persona: str, response) -> None:
    """acme's personas get a plan of acme's checkpoints; mallory none (they are not hers)."""
    plan = response.context["plan"]
    if persona == "other_admin":
        assert plan is None, "mallory got a plan of acme's checkpoints"
    else:
        assert plan is not None and plan["planned_expert_bytes"] > 0, f"{persona}: no plan"


def _expert(i: int):
    return lambda w: [w.experts[i].pk]


def _checkpoint_page(i: int):
    return lambda w: reverse("registry:detail", args=[w.experts[i].pk])


def _run_page(w: World) -> str:
    return reverse("runs:detail", args=[w.queued_run.pk])


def _register_data(w: World) -> dict:
    return {"name": "matrix-expert", "role": "expert", "family_name": "tiny-llama", "source": "local",
            "local_path": str(w.family_paths["experts"][1])}


def _merge_data(w: World) -> dict:
    return merge_post({"base": w.base, "experts": w.experts[:2]})


def _import_data(w: World) -> dict:
    """A mergekit config naming acme's checkpoints (mallory's team has none of these names)."""
    return {"yaml": "merge_method: ties\nbase_model: base\nmodels:\n"
                    "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
                    "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n"}


def _import_refused_check(w: World, persona: str, response) -> None:
    """The only persona the import answers (200) is mallory: the names are not her team's."""
    assert persona == "other_admin", persona
    assert "is not one of your team&#x27;s checkpoints" in response.content.decode()


def _task_data(w: World) -> dict:
    """A new task from the file of acme's uploaded one (in acme's folder: not mallory's to read)."""
    return {"name": "matrix-new-task", "kind": "auto", "path": w.task.path}


def _task_refused_check(w: World, persona: str, response) -> None:
    """The only persona the form answers (200) is mallory: acme's folder is not hers."""
    assert persona == "other_admin", persona
    assert "is not inside your team&#x27;s checkpoint roots" in response.content.decode()


def _tasks_data(w: World) -> dict:
    return {"tasks": [str(w.task.pk)]}


def _sweep_data(w: World) -> dict:
    return {**_merge_data(w), "sweep_budgets": "0.25, 0.5", "evaluate_tasks": [str(w.task.pk)]}


def _evaluation_page(attr: str):
    return lambda w: reverse("evaluation:detail", args=[getattr(w, attr).pk])


def _sweep_page(w: World) -> str:
    return reverse("evaluation:sweep", args=[w.queued_sweep.pk])


TASKS_PAGE = "/evaluation/tasks/"


def _publishing_panel(w: World) -> str:
    return reverse("runs:detail", args=[w.succeeded_run.pk]) + "#model"


def _new_push(w: World, client: Client) -> bool:
    from mergehub.publishing.models import HubPush

    return HubPush.objects.filter(repo_id="acme/matrix-model").exists()


def _queued_push(w: World):
    """A queued push of the succeeded run (a row, as queue_push leaves it before its wake-up)."""
    from mergehub.publishing.models import HubPush

    push, _ = HubPush.objects.get_or_create(team=w.acme, run=w.succeeded_run, repo_id="acme/matrix-queued",
                                            defaults={"author": w.users["admin"], "token": "hf_matrixtoken"})
    return push


def _queued_push_cancelled(w: World, client: Client) -> bool:
    push = _queued_push(w)
    return push.status != "queued" or push.cancel_requested or push.token == ""
