"""The isolation matrix itself: every URL pattern's cases, each with the answer every persona
must get (tests/pages/test_isolation_matrix.py reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from django.test import Client
from django.urls import reverse

from tests.pages.isolation_effects import (TASKS_PAGE, _acme_lost_a_member, _active_job_cancelled,
                                           _bob_promoted, _bob_removed, _bobs_membership,
                                           _checkpoint_deleted, _checkpoint_page, _comment_deleted,
                                           _evaluation_cancelled, _evaluation_page, _evaluation_retried,
                                           _expert, _family_job_cancelled, _import_data,
                                           _import_refused_check, _index_retried, _mallory_in_acme,
                                           _matrix_team_created, _merge_data, _new_checkpoint,
                                           _new_evaluation, _new_family_job, _new_index_job, _new_push,
                                           _new_run, _new_sweep, _new_task, _new_token, _preview_check,
                                           _publishing_panel, _queued_push, _queued_push_cancelled,
                                           _queued_run_cancelled, _register_data, _review_changed,
                                           _review_page, _run_notes_changed, _run_page, _run_retried,
                                           _self_approval_allowed, _sweep_cancelled, _sweep_data,
                                           _sweep_page, _sweep_retried, _task_data, _task_deleted,
                                           _task_refused_check, _tasks_data, _token_revoked, _working_in_acme)
from tests.pages.isolation_world import PERSONAS, USERNAMES, World

# --- expected answers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    status: int
    to: str | Callable[[World], str] | None = None  # a redirect's Location (a prefix of it unless exact)
    exact: bool = False
    effect: bool | None = None  # for an action: whether it changed acme's state

    def location(self, w: World) -> str:
        return self.to(w) if callable(self.to) else self.to


OK, FORBIDDEN, NOT_FOUND, NOT_ALLOWED = Answer(200), Answer(403), Answer(404), Answer(405)
TO_LOGIN = Answer(302, to="/login/?next=")


def redirect(to, *, effect: bool | None = None) -> Answer:
    """A redirect to exactly ``to`` (a path, or a function of the world giving one)."""
    return Answer(302, to=to, exact=True, effect=effect)


def refused(answer: Answer) -> Answer:
    return Answer(answer.status, answer.to, answer.exact, effect=False)


def done(to, *, exact: bool = True) -> Answer:
    return Answer(302, to=to, exact=exact, effect=True)


def reads(*, other: Answer = NOT_FOUND) -> dict[str, Answer]:
    """A page: acme's personas read it; ``other`` is what mallory gets (404 for acme's objects,
    200 for pages scoped to her own current team)."""
    return {"anonymous": TO_LOGIN, "viewer": OK, "member": OK, "other_admin": other, "admin": OK}


def acts(success: Answer, *, other: Answer = refused(NOT_FOUND), viewer: Answer = refused(FORBIDDEN),
         member: Answer | None = None) -> dict[str, Answer]:
    """An action: anonymous is sent to log in, the viewer refused, member and admin succeed."""
    return {"anonymous": refused(TO_LOGIN), "viewer": viewer, "member": member or success,
            "other_admin": other, "admin": success}


def nobody() -> dict[str, Answer]:
    """An action on ids that do not belong together: 404 for everyone logged in, no change."""
    return {"anonymous": refused(TO_LOGIN), **{p: refused(NOT_FOUND) for p in USERNAMES}}


def post_only() -> dict[str, Answer]:
    """GET on a POST-only view: 405 for everyone logged in (before any object is looked up,
    so it tells mallory nothing), the login redirect first for anonymous."""
    return {"anonymous": TO_LOGIN, "viewer": NOT_ALLOWED, "member": NOT_ALLOWED,
            "other_admin": NOT_ALLOWED, "admin": NOT_ALLOWED}


@dataclass(frozen=True)
class Case:
    method: str  # "get" or "post"
    expect: dict[str, Answer]
    variant: str = ""  # names a second case of the same method (other ids)
    args: Callable[[World], list] = lambda w: []
    data: Callable[[World], dict] | None = None  # POST body or GET query
    effect: Callable[[World, Client], bool] | None = None  # True once acme's state changed
    htmx: bool = False
    check: Callable[[World, str, object], None] | None = None  # extra check of a response
    # personas whose action, though it changes nothing of acme's, queues one job of their own team
    # (mallory training her own team's demo family); the effect still must not touch acme
    own_team_job: tuple[str, ...] = ()


# --- the matrix -------------------------------------------------------------------------------
# url name → the cases (one per HTTP method that applies). "admin" stands for the whole Django
# admin namespace (see test_admin_site_is_staff_only).

MATRIX: dict[str, list[Case]] = {
    "dashboard:dashboard": [Case("get", reads(other=OK))],
    "login": [Case("get", {"anonymous": OK, **{p: redirect("/") for p in USERNAMES}})],
    "logout": [
        Case("post", {p: redirect("/login/") for p in PERSONAS}),
        Case("get", {p: NOT_ALLOWED for p in PERSONAS}),
    ],
    "accounts:switch_team": [  # any member may switch to acme; mallory may not
        Case("post", acts(done("/"), viewer=done("/")), data=lambda w: {"team": "acme"},
             effect=_working_in_acme),
        Case("get", post_only()),
    ],
    "accounts:teams": [  # one's own teams; anyone signed in may create a team (a new team, not acme's state)
        Case("get", reads(other=OK)),
        Case("post", {"anonymous": refused(TO_LOGIN), **{p: done("/teams/matrix-team/") for p in USERNAMES}},
             data=lambda w: {"name": "Matrix team"}, effect=_matrix_team_created),
    ],
    "accounts:team": [  # members' list for the team; inviting a member is for admins
        Case("get", reads(), args=lambda w: [w.acme.slug]),
        Case("post", acts(done("/teams/acme/"), member=refused(FORBIDDEN)), args=lambda w: [w.acme.slug],
             data=lambda w: {"username": "mallory", "role": "viewer"}, effect=_mallory_in_acme),
    ],
    "accounts:leave": [  # any member may leave; alice, acme's last admin, is sent back with the reason
        Case("post", {**acts(done("/teams/"), viewer=done("/teams/")), "admin": redirect("/teams/acme/", effect=False)},
             args=lambda w: [w.acme.slug], effect=_acme_lost_a_member),
        Case("get", post_only(), args=lambda w: [w.acme.slug]),
    ],
    "accounts:member_role": [  # bob made a member: team admins only
        Case("post", acts(done("/teams/acme/"), member=refused(FORBIDDEN)), args=_bobs_membership,
             data=lambda w: {"role": "member"}, effect=_bob_promoted),
        Case("get", post_only(), args=_bobs_membership),
        # rival's slug with acme's membership: the membership must be of that team
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.rival.slug, _bobs_membership(w)[1]],
             data=lambda w: {"role": "member"}, effect=_bob_promoted),
    ],
    "accounts:member_remove": [  # bob removed: team admins only
        Case("post", acts(done("/teams/acme/"), member=refused(FORBIDDEN)), args=_bobs_membership,
             effect=_bob_removed),
        Case("get", post_only(), args=_bobs_membership),
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.rival.slug, _bobs_membership(w)[1]],
             effect=_bob_removed),
    ],
    "accounts:review_policy": [  # whether authors approve their own runs: team admins only
        Case("post", acts(done("/teams/acme/"), member=refused(FORBIDDEN)), args=lambda w: [w.acme.slug],
             data=lambda w: {"allow_self_approval": "on"}, effect=_self_approval_allowed),
        Case("get", post_only(), args=lambda w: [w.acme.slug]),
    ],
    "audit:log": [  # the team's audit log: team admins only (403 for members and viewers, as managing members)
        Case("get", {**reads(), "viewer": FORBIDDEN, "member": FORBIDDEN}, args=lambda w: [w.acme.slug]),
    ],
    "tokens:list": [  # anyone in the team may create tokens for themself; the page shows a new one once
        Case("get", reads(), args=lambda w: [w.acme.slug]),
        Case("post", acts(Answer(200, effect=True), viewer=Answer(200, effect=True)), args=lambda w: [w.acme.slug],
             data=lambda w: {"name": "matrix new token"}, effect=_new_token),
    ],
    "tokens:revoke": [  # carol's token: hers, or a team admin's to revoke; bob does not see it (404)
        Case("post", acts(done("/teams/acme/tokens/"), viewer=refused(NOT_FOUND)),
             args=lambda w: [w.acme.slug, w.token.pk], effect=_token_revoked),
        Case("get", post_only(), args=lambda w: [w.acme.slug, w.token.pk]),
    ],
    "registry:list": [Case("get", reads(other=OK))],
    "registry:register": [
        Case("get", reads(other=OK)),
        # mallory registers into her own current team: acme's family is not hers, so the form
        # answers with an error and nothing is registered anywhere.
        Case("post", acts(done("/checkpoints/", exact=False), other=refused(OK)), data=_register_data,
             effect=_new_checkpoint),
    ],
    "registry:detail": [Case("get", reads(), args=_expert(0))],
    "registry:status": [Case("get", reads(), args=_expert(2), htmx=True)],  # htmx poll: expert-3 is indexing
    "registry:reindex": [
        Case("post", acts(done(_checkpoint_page(1))), args=_expert(1), effect=_new_index_job),
        Case("get", post_only(), args=_expert(1)),
    ],
    "registry:delete": [  # expert-4, whose index failed: nothing uses it, so it may be deleted
        Case("post", acts(done("/checkpoints/")), args=lambda w: [w.failed_checkpoint.pk],
             effect=_checkpoint_deleted),
        Case("get", post_only(), args=lambda w: [w.failed_checkpoint.pk]),
    ],
    "registry:cancel_index": [
        Case("post", acts(done(_checkpoint_page(2))), args=lambda w: [w.experts[2].pk, w.active_job.pk],
             effect=_active_job_cancelled),
        Case("get", post_only(), args=lambda w: [w.experts[2].pk, w.active_job.pk]),
        # mallory's own checkpoint with acme's index job: the job must be of that checkpoint
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.rival_base.pk, w.active_job.pk],
             effect=_active_job_cancelled),
    ],
    "registry:retry_index": [
        Case("post", acts(done(_checkpoint_page(1))), args=lambda w: [w.experts[1].pk, w.done_job.pk],
             effect=_index_retried),
        Case("get", post_only(), args=lambda w: [w.experts[1].pk, w.done_job.pk]),
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.rival_base.pk, w.done_job.pk],
             effect=_index_retried),
    ],
    "runs:list": [Case("get", reads(other=OK))],
    "runs:new": [
        Case("get", reads(other=OK)),
        # mallory's form offers her own team's checkpoints only: acme's are "not a valid choice".
        Case("post", acts(done("/runs/", exact=False), other=refused(OK)), data=_merge_data, effect=_new_run),
    ],
    "runs:operator_fields": [  # htmx, scoped to the current team
        Case("get", reads(other=OK), data=lambda w: {"method": "ties", "base": str(w.base.pk)}, htmx=True),
    ],
    "runs:preview": [  # htmx, reads the index only: viewers may preview, mallory gets no plan
        Case("post", reads(other=OK), data=_merge_data, htmx=True, check=_preview_check),
        Case("get", post_only(), htmx=True),
    ],
    "runs:import_yaml": [
        # fills the merge form in and changes nothing: viewers may import too; mallory's team has
        # no checkpoints of these names, so her import answers with the error
        Case("post", {**reads(other=OK), **{p: Answer(302, to="/runs/new/?", exact=False)
                                            for p in ("viewer", "member", "admin")}},
             data=_import_data, check=_import_refused_check),
        Case("get", post_only()),
    ],
    # runs side by side, ids in the query (the permalink): acme's runs are mallory's missing runs
    "runs:compare": [Case("get", reads(), data=lambda w: {"ids": f"{w.succeeded_run.pk},{w.queued_run.pk}"})],
    "runs:detail": [Case("get", reads(), args=lambda w: [w.queued_run.pk])],
    "runs:config_yaml": [Case("get", reads(), args=lambda w: [w.queued_run.pk])],  # the run's YAML, a download
    "runs:live": [Case("get", reads(), args=lambda w: [w.queued_run.pk], htmx=True)],  # htmx poll
    "runs:cancel": [
        Case("post", acts(done(_run_page)), args=lambda w: [w.queued_run.pk], effect=_queued_run_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_run.pk]),
    ],
    "runs:notes": [
        Case("post", acts(done(lambda w: reverse("runs:detail", args=[w.queued_run.pk]) + "#run-notes")),
             args=lambda w: [w.queued_run.pk], data=lambda w: {"tags": "matrix-tag", "note": "matrix note"},
             effect=_run_notes_changed),
        Case("get", post_only(), args=lambda w: [w.queued_run.pk]),
    ],
    "runs:retry": [
        # to the new run's page
        Case("post", acts(done("/runs/", exact=False)), args=lambda w: [w.cancelled_run.pk],
             effect=_run_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_run.pk]),
    ],
    # --- review (the succeeded run, alice's) ---
    "reviews:review": [
        # anyone in the team comments, viewers included
        Case("post", acts(done(_review_page), viewer=done(_review_page)), args=lambda w: [w.succeeded_run.pk],
             data=lambda w: {"action": "comment", "body": "matrix review comment"}, effect=_review_changed),
        # a review is requested by the run's author or a team admin: carol is neither
        Case("post", acts(done(_review_page), member=refused(FORBIDDEN)), variant="request",
             args=lambda w: [w.succeeded_run.pk], data=lambda w: {"action": "request"}, effect=_review_changed),
        Case("get", post_only(), args=lambda w: [w.succeeded_run.pk]),
    ],
    "reviews:delete_comment": [  # carol's comment: hers, or a team admin's to delete
        Case("post", acts(done(_review_page)), args=lambda w: [w.succeeded_run.pk, w.comment.pk],
             effect=_comment_deleted),
        Case("get", post_only(), args=lambda w: [w.succeeded_run.pk, w.comment.pk]),
        # another run with the comment: the comment must be of that run
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.queued_run.pk, w.comment.pk],
             effect=_comment_deleted),
    ],
    # --- evaluation ---
    "evaluation:tasks": [
        Case("get", reads(other=OK)),
        # mallory registers into her own team: the file lies in acme's folder, so her form says it is
        # not inside her roots and nothing is registered anywhere
        Case("post", acts(done(TASKS_PAGE), other=refused(OK)), data=_task_data, effect=_new_task,
             check=_task_refused_check),
    ],
    "evaluation:task_delete": [
        Case("post", acts(done(TASKS_PAGE)), args=lambda w: [w.task.pk], effect=_task_deleted),
        Case("get", post_only(), args=lambda w: [w.task.pk]),
    ],
    "evaluation:family_train": [  # team admins only; mallory trains her own team's family
        Case("post", acts(done(TASKS_PAGE), member=refused(FORBIDDEN), other=refused(redirect(TASKS_PAGE))),
             data=lambda w: {"seed": "0"}, effect=_new_family_job, own_team_job=("other_admin",)),
        Case("get", post_only()),
    ],
    "evaluation:family_live": [Case("get", reads(), args=lambda w: [w.family_job.pk], htmx=True)],  # htmx poll
    "evaluation:family_cancel": [
        Case("post", acts(done(TASKS_PAGE), member=refused(FORBIDDEN)), args=lambda w: [w.family_job.pk],
             effect=_family_job_cancelled),
        Case("get", post_only(), args=lambda w: [w.family_job.pk]),
    ],
    "evaluation:evaluate_run": [
        Case("post", acts(done(lambda w: reverse("runs:detail", args=[w.succeeded_run.pk]) + "#benchmark")),
             args=lambda w: [w.succeeded_run.pk], data=_tasks_data, effect=_new_evaluation),
        Case("get", post_only(), args=lambda w: [w.succeeded_run.pk]),
    ],
    "evaluation:evaluate_checkpoint": [
        # to the new evaluation's page
        Case("post", acts(done("/evaluation/evaluations/", exact=False)), args=lambda w: [w.base.pk],
             data=_tasks_data, effect=_new_evaluation),
        Case("get", post_only(), args=lambda w: [w.base.pk]),
    ],
    "evaluation:detail": [Case("get", reads(), args=lambda w: [w.cancelled_evaluation.pk])],
    "evaluation:live": [Case("get", reads(), args=lambda w: [w.queued_evaluation.pk], htmx=True)],  # htmx poll
    "evaluation:cancel": [
        Case("post", acts(done(_evaluation_page("queued_evaluation"))), args=lambda w: [w.queued_evaluation.pk],
             effect=_evaluation_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_evaluation.pk]),
    ],
    "evaluation:retry": [
        Case("post", acts(done("/evaluation/evaluations/", exact=False)), args=lambda w: [w.cancelled_evaluation.pk],
             effect=_evaluation_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_evaluation.pk]),
    ],
    "evaluation:sweeps": [Case("get", reads(other=OK))],
    "evaluation:sweep_new": [
        # the merge form posted with "Sweep budgets": mallory's form offers her own checkpoints only
        Case("post", acts(done("/evaluation/sweeps/", exact=False), other=refused(OK)), data=_sweep_data,
             effect=_new_sweep),
        Case("get", post_only()),
    ],
    "evaluation:sweep": [Case("get", reads(), args=lambda w: [w.cancelled_sweep.pk])],
    "evaluation:sweep_live": [Case("get", reads(), args=lambda w: [w.queued_sweep.pk], htmx=True)],  # htmx poll
    "evaluation:sweep_cancel": [
        Case("post", acts(done(_sweep_page)), args=lambda w: [w.queued_sweep.pk], effect=_sweep_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_sweep.pk]),
    ],
    "evaluation:sweep_retry": [
        Case("post", acts(done("/evaluation/sweeps/", exact=False)), args=lambda w: [w.cancelled_sweep.pk],
             effect=_sweep_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_sweep.pk]),
    ],
    # --- publishing: the succeeded run's files (downloads stream), pushes to the Hub ---
    "publishing:file": [Case("get", reads(), args=lambda w: [w.succeeded_run.pk, "config.json"])],
    "publishing:archive": [Case("get", reads(), args=lambda w: [w.succeeded_run.pk])],  # "Download all" (tar)
    "publishing:push": [  # queued only (its wake-up never runs here): nothing reaches the Hub
        Case("post", acts(done(_publishing_panel)), args=lambda w: [w.succeeded_run.pk],
             data=lambda w: {"repo_id": "acme/matrix-model", "token": "hf_matrixtoken"}, effect=_new_push),
        Case("get", post_only(), args=lambda w: [w.succeeded_run.pk]),
    ],
    "publishing:push_cancel": [
        Case("post", acts(done(_publishing_panel)), args=lambda w: [w.succeeded_run.pk, _queued_push(w).pk],
             effect=_queued_push_cancelled),
        Case("get", post_only(), args=lambda w: [w.succeeded_run.pk, _queued_push(w).pk]),
        # another run's id with the succeeded run's push: the push must be of that run
        Case("post", nobody(), variant="mixed-ids", args=lambda w: [w.queued_run.pk, _queued_push(w).pk],
             effect=_queued_push_cancelled),
    ],
    "admin": [],  # the Django admin as a group: test_admin_site_is_staff_only
    "api": [],  # the REST API as a group: tests/api/test_token_matrix.py
}

# Cells that fail today because of an isolation bug in the app: (url name, method[/variant], persona) →
# reason. They run as strict xfails, so a fix makes them pass loudly (and they are then removed).
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}
