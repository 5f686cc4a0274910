"""The isolation matrix: every URL pattern of the project × every persona, with the expected answer.

Personas (tests/conftest.py): ``anonymous`` (not logged in), ``viewer`` (bob, viewer of acme),
``member`` (carol, member of acme), ``other_admin`` (mallory, admin of rival) and ``admin``
(alice, admin of acme). The objects are acme's: its registered family (a base and two indexed
experts), a queued run, a cancelled run, a third expert whose index job is queued, a fourth whose
index failed and expert-2's succeeded index job; for evaluation, a succeeded run, an uploaded task,
a queued and a cancelled evaluation of the base, a queued and a cancelled sweep and a queued
training of a demo family; every URL that takes an id gets the id of one of them (and the index-job actions also get
mallory's own checkpoint with acme's job, ids that do not belong together).
They are built once for the module in a transaction that every test rolls back to (see
``matrix_world``), so each cell costs only its requests.

What the app promises, cell by cell:

- anonymous: a redirect to ``/login/`` for every page and action (the login page aside);
- other_admin: 404 for acme's objects and acme's team page, the same answer (status and body)
  as for an id that does not exist, so nothing tells her they exist; pages scoped to the
  current team (lists, forms, htmx fragments) answer 200 for her own team and show nothing of
  acme's; whatever she posts changes nothing of acme's;
- viewer: reads every page; every action that changes something answers 403 and changes
  nothing (the object is as it was, no new run or index job, no job queued);
- member and admin: may do everything, except that managing members is for admins only;
- nobody's page shows another team's names (acme's to anonymous and mallory, rival's to acme).

A cell that fails today because of an isolation bug goes into KNOWN_BUGS: it then runs as a
strict xfail, visible in every run until the bug is fixed.

The Django admin (``admin:`` namespace) is the site admins' area: no persona here is staff, so
every admin URL, named or not (the "view on site" shortcut and the catch-all included),
redirects to the admin login (its logout to the admin index, which does); the admin login page
itself answers 200.

``test_every_url_has_a_matrix_entry`` walks Django's resolver: a URL (page or API) added without
an entry in MATRIX fails it, and so does an entry whose URL is gone. Unnamed patterns are keyed
by their route; the admin namespace is one group. The REST API (``/api/v1/``) is one group here too:
tokens are its credentials, not these personas' sessions, so tests/api/test_token_matrix.py holds
its matrix (every API URL × every kind of credential, session included), and fails the same way for
an API URL without an entry there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.web.conftest import merge_post, ties_inputs

pytestmark = pytest.mark.django_db

PERSONAS = ("anonymous", "viewer", "member", "other_admin", "admin")
USERNAMES = {"viewer": "bob", "member": "carol", "other_admin": "mallory", "admin": "alice"}
MISSING_PK = 10**6

# Strings that only acme's pages may show: names of its checkpoints, family, runs and team.
ACME_MARKERS = ("expert-1", "expert-2", "expert-3", "expert-4", "tiny-llama", "matrix queued run", "matrix cancelled run",
                "matrix succeeded run", "matrix-task", "matrix-family", "matrix queued sweep",
                "matrix cancelled sweep", "Acme")
RIVAL_MARKERS = ("rival-base", "rival-family", "rival-task", "Rival")  # and what only rival's may show


# --- the objects ------------------------------------------------------------------------------

@dataclass
class World:
    users: dict  # persona → user (anonymous aside)
    acme: object
    rival: object
    base: object
    experts: list  # expert-1 and expert-2 indexed, expert-3 just registered
    family_paths: dict
    queued_run: object
    cancelled_run: object
    active_job: object  # expert-3's queued index job
    done_job: object  # expert-2's succeeded index job (from its registration)
    rival_base: object  # a checkpoint of mallory's team
    settings: dict  # the data dir and checkpoint root the objects live in
    failed_checkpoint: object = None  # expert-4, whose index failed (deletable: nothing uses it)
    # evaluation
    succeeded_run: object = None  # merged by the (sync) worker: the one run that may be evaluated
    task: object = None  # acme's task, uploaded (so its file is in acme's folder)
    rival_task: object = None
    queued_evaluation: object = None  # of the base, on the task
    cancelled_evaluation: object = None
    queued_sweep: object = None
    cancelled_sweep: object = None
    family_job: object = None  # a queued training of "matrix-family" (so "tiny-llama" may be trained)
    run_count: int = 0
    index_job_count: int = 0
    checkpoint_count: int = 0
    evaluation_count: int = 0
    sweep_count: int = 0
    family_job_count: int = 0
    task_count: int = 0
    token: object = None  # carol's API token (the team's tokens page)
    token_count: int = 0

    def client(self, persona: str) -> Client:
        client = Client()
        if persona != "anonymous":
            client.force_login(self.users[persona])
        return client


def world_settings(root) -> dict:
    """What tests/conftest.py's ``mergehub_env`` sets, for a directory shared by the module."""
    return {"MERGEHUB_DATA_DIR": root / "data", "MERGEHUB_CHECKPOINT_ROOTS": [root],
            "MERGEHUB_BLOCK_SIZE": 256, "MERGEHUB_HEARTBEAT_TIMEOUT": 120, "MERGEHUB_JOB_TIMEOUT": 600,
            # the personas never log in with a password (force_login): hash it cheaply
            "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"]}


def build_world(root) -> World:
    """The personas and acme's objects, as tests/conftest.py makes them (alice, bob, carol in
    acme as admin, viewer, member; mallory admin of rival; acme's family registered by alice and
    indexed), plus a queued run, a cancelled run and a queued index job. Only the family's
    index jobs are executed; the runs and expert-3's index job stay queued."""
    from django.contrib.auth import get_user_model
    from django.test import TestCase

    from mergehub.accounts.models import Membership, Role, Team
    from mergehub.registry.models import Checkpoint, IndexJob
    from mergehub.registry.services import register_checkpoint
    from mergehub.runs.models import MergeRun
    from mergehub.runs.services import cancel_run, create_run
    from tests.conftest import PASSWORD
    from tests.fixtures.family import make_family

    acme = Team.objects.create(name="Acme", slug="acme")
    rival = Team.objects.create(name="Rival", slug="rival")
    roles = {"admin": (acme, Role.ADMIN), "viewer": (acme, Role.VIEWER), "member": (acme, Role.MEMBER),
             "other_admin": (rival, Role.ADMIN)}
    users = {}
    for persona, username in USERNAMES.items():
        users[persona] = get_user_model().objects.create_user(
            username=username, email=f"{username}@example.com", password=PASSWORD)
        team, role = roles[persona]
        Membership.objects.create(user=users[persona], team=team, role=role)
    alice = users["admin"]

    paths = make_family(root)
    with TestCase.captureOnCommitCallbacks(execute=True):
        base = register_checkpoint(team=acme, user=alice, name="base", role="base", family_name="tiny-llama",
                                   local_path=str(paths["base"]))
    experts = []
    for i, path in enumerate(paths["experts"], start=1):
        with TestCase.captureOnCommitCallbacks(execute=True):
            experts.append(register_checkpoint(team=acme, user=alice, name=f"expert-{i}", role="expert",
                                               family_name="tiny-llama", local_path=str(path)))
    for obj in (base, *experts):
        obj.refresh_from_db()
    family = {"base": base, "experts": experts}
    queued_run = create_run(user=alice, team=acme, name="matrix queued run", **ties_inputs(family))
    cancelled_run = create_run(user=alice, team=acme, name="matrix cancelled run", **ties_inputs(family))
    cancel_run(run=cancelled_run, user=alice)
    # A third expert, just registered: its index job stays queued (its wake-up is never run).
    # Re-indexing expert-1 instead would make it pending, and then no merge of it could start.
    e3 = register_checkpoint(team=acme, user=alice, name="expert-3", role="expert", family_name="tiny-llama",
                             local_path=str(paths["experts"][1]))
    rival_base = register_checkpoint(team=rival, user=users["other_admin"], name="rival-base", role="base",
                                     family_name="rival-family", local_path=str(paths["base"]))
    for obj in (queued_run, cancelled_run):
        obj.refresh_from_db()
    e1, e2 = experts
    done_job, active_job = e2.index_jobs.get(), e3.index_jobs.get()
    assert e1.index_status == e2.index_status == "ready" and done_job.status == "succeeded"
    assert active_job.status == "queued"
    assert queued_run.status == "queued" and cancelled_run.status == "cancelled"
    w = World(users=users, acme=acme, rival=rival, base=base, experts=[e1, e2, e3], family_paths=paths,
              queued_run=queued_run, cancelled_run=cancelled_run, active_job=active_job,
              done_job=done_job, rival_base=rival_base, settings=world_settings(root))
    w.failed_checkpoint = Checkpoint.objects.create(
        team=acme, family=base.family, name="expert-4", role="expert", index_status="failed",
        index_error="matrix index failure", added_by=alice)
    build_evaluation_world(w, family)
    from mergehub.api.models import ApiToken
    from mergehub.api.tokens import create_token

    w.token, _ = create_token(user=users["member"], team=acme, name="matrix token", by=users["member"])
    w.token_count = ApiToken.objects.count()
    w.run_count, w.index_job_count = MergeRun.objects.count(), IndexJob.objects.count()
    w.checkpoint_count = Checkpoint.objects.count()
    return w


TASK_LINES = b'{"prompt": "reverse:abcd=", "target": "dcba"}\n{"prompt": "reverse:word=", "target": "drow"}\n'


def build_evaluation_world(w: World, family: dict) -> None:
    """acme's evaluation objects: a run merged by the (sync) worker, an uploaded task, a queued
    and a cancelled evaluation of the base, a queued and a cancelled sweep, a queued training
    of a demo family; and rival's own task. Only the merge is executed."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import TestCase

    from mergehub.evaluation import services as evaluations, sweeps, training
    from mergehub.evaluation.models import EvalTask, EvaluationJob, FamilyJob, SweepJob
    from mergehub.evaluation.task_registry import register_task
    from mergehub.runs.services import create_run

    alice, mallory = w.users["admin"], w.users["other_admin"]
    with TestCase.captureOnCommitCallbacks(execute=True):
        w.succeeded_run = create_run(user=alice, team=w.acme, name="matrix succeeded run", **ties_inputs(family))
    w.succeeded_run.refresh_from_db()
    assert w.succeeded_run.status == "succeeded", w.succeeded_run.error
    w.task = register_task(team=w.acme, user=alice, name="matrix-task",
                           upload=SimpleUploadedFile("matrix.jsonl", TASK_LINES))
    w.rival_task = register_task(team=w.rival, user=mallory, name="rival-task",
                                 upload=SimpleUploadedFile("rival.jsonl", TASK_LINES))
    w.queued_evaluation = evaluations.queue_evaluation(user=alice, team=w.acme, tasks=[w.task], checkpoint=w.base)
    w.cancelled_evaluation = evaluations.cancel_evaluation(
        job=evaluations.queue_evaluation(user=alice, team=w.acme, tasks=[w.task], checkpoint=w.base), user=alice)
    inputs = {k: v for k, v in ties_inputs(family).items() if k != "budget"}
    w.queued_sweep = sweeps.create_sweep(user=alice, team=w.acme, name="matrix queued sweep", budgets="0.5",
                                         tasks=[w.task], **inputs)
    w.cancelled_sweep = sweeps.cancel_sweep(sweep=sweeps.create_sweep(
        user=alice, team=w.acme, name="matrix cancelled sweep", budgets="0.5", **inputs), user=alice)
    w.family_job = training.queue_family_training(team=w.acme, user=alice, name="matrix-family")
    assert w.queued_evaluation.status == w.queued_sweep.status == w.family_job.status == "queued"
    assert w.cancelled_evaluation.status == w.cancelled_sweep.status == "cancelled"
    w.evaluation_count, w.sweep_count = EvaluationJob.objects.count(), SweepJob.objects.count()
    w.family_job_count, w.task_count = FamilyJob.objects.count(), EvalTask.objects.count()


@pytest.fixture(scope="module")
def matrix_world(django_db_setup, django_db_blocker, tmp_path_factory):
    """The world, built once for the module inside a transaction that is rolled back at its
    end (Django's setUpTestData pattern): every test runs in a savepoint of it, so each starts
    from the same objects and nothing it does survives it. Its job wake-ups never run (they
    wait for a commit that never comes), so the runs and index job stay queued."""
    from django.db import transaction
    from django.test import override_settings
    from django_q.conf import Conf

    root = tmp_path_factory.mktemp("isolation-matrix")
    with (override_settings(**world_settings(root)), pytest.MonkeyPatch.context() as patch,
          django_db_blocker.unblock()):
        patch.setattr(Conf, "SYNC", True)  # the family's index jobs run in-process
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            world = build_world(root)
        except BaseException:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
            raise
    try:
        yield world
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(matrix_world, mergehub_env, settings) -> World:
    """The module's world, with the settings pointing at its files (``mergehub_env`` points
    them at this test's tmp_path)."""
    from mergehub.registry.models import Checkpoint, IndexJob
    from mergehub.runs.models import MergeRun

    from mergehub.evaluation.models import EvalTask, EvaluationJob, FamilyJob, SweepJob

    for name, value in matrix_world.settings.items():
        setattr(settings, name, value)
    w = matrix_world
    # What an earlier test did was rolled back with its savepoint.
    assert (MergeRun.objects.count(), IndexJob.objects.count(), Checkpoint.objects.count()) == (
        w.run_count, w.index_job_count, w.checkpoint_count)
    assert (EvaluationJob.objects.count(), SweepJob.objects.count(), FamilyJob.objects.count(),
            EvalTask.objects.count()) == (w.evaluation_count, w.sweep_count, w.family_job_count, w.task_count)
    assert MergeRun.objects.filter(pk=w.queued_run.pk, status="queued", cancel_requested=False).exists()
    assert IndexJob.objects.filter(pk=w.active_job.pk, status="queued", cancel_requested=False).exists()
    for model, job in ((EvaluationJob, w.queued_evaluation), (SweepJob, w.queued_sweep), (FamilyJob, w.family_job)):
        assert model.objects.filter(pk=job.pk, status="queued", cancel_requested=False).exists()
    return w


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


# --- the effects an action may have on acme ---------------------------------------------------

def _mallory_in_acme(w: World, client: Client) -> bool:
    from mergehub.accounts.models import Membership

    return Membership.objects.filter(team=w.acme, user=w.users["other_admin"]).exists()


def _bobs_membership(w: World) -> list:
    from mergehub.accounts.models import Membership

    return [w.acme.slug, Membership.objects.get(team=w.acme, user=w.users["viewer"]).pk]


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


# --- the matrix -------------------------------------------------------------------------------
# url name → the cases (one per HTTP method that applies). "admin" stands for the whole Django
# admin namespace (see test_admin_site_is_staff_only).

MATRIX: dict[str, list[Case]] = {
    "web:dashboard": [Case("get", reads(other=OK))],
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
    "admin": [],  # the Django admin as a group: test_admin_site_is_staff_only
    "api": [],  # the REST API as a group: tests/api/test_token_matrix.py
}

# Cells that fail today because of an isolation bug in the app: (url name, method[/variant], persona) →
# reason. They run as strict xfails, so a fix makes them pass loudly (and they are then removed).
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}


# --- the URL patterns -------------------------------------------------------------------------

GROUPS = ("admin", "api")  # the parts of the site the matrix covers as a whole
API_PREFIX = "api/v1/"  # the "api" group: every route under it


def url_patterns(patterns=None, prefix: str = "", namespaces: tuple = ()):
    """(full route, namespaced name or None, namespaces) of every URL pattern, recursively."""
    if patterns is None:
        patterns = get_resolver().url_patterns
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = namespaces + ((p.namespace,) if p.namespace else ())
            yield from url_patterns(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            name = ":".join(namespaces + (p.name,)) if p.name else None
            yield prefix + str(p.pattern), name, namespaces


def matrix_key(route: str, name: str | None, namespaces: tuple) -> str:
    """The MATRIX key of a pattern: its group, its namespaced name, or (unnamed) its route."""
    if namespaces and namespaces[0] in GROUPS:
        return namespaces[0]
    if route.startswith(API_PREFIX):
        return "api"
    return name or f"route:{route}"


def test_every_url_has_a_matrix_entry():
    found = {matrix_key(*p) for p in url_patterns()}
    missing = sorted(found - set(MATRIX))
    stale = sorted(set(MATRIX) - found)
    assert not missing, f"URL patterns without an entry in the isolation matrix: {missing}"
    assert not stale, f"Isolation matrix entries whose URL no longer exists: {stale}"
    for name, cases in MATRIX.items():
        assert cases or name in GROUPS, f"{name}: no case"
        for case in cases:
            assert set(case.expect) == set(PERSONAS), f"{name} {case.method}: personas {sorted(case.expect)}"
            assert case.method in ("get", "post"), (name, case.method)
        methods = [(c.method, c.variant) for c in cases]
        assert len(set(methods)) == len(methods), f"{name}: one case per method (and variant)"


# --- the cells --------------------------------------------------------------------------------

def _cells():
    for name, cases in MATRIX.items():
        for case in cases:
            method = case.method + (f"/{case.variant}" if case.variant else "")
            for persona in PERSONAS:
                reason = KNOWN_BUGS.get((name, method, persona))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                who = f"{persona}({USERNAMES[persona]})" if persona in USERNAMES else persona
                yield pytest.param(name, case, persona, marks=marks, id=f"{name}-{method.upper()}-{who}")


def _request(client: Client, case: Case, url: str, data: dict):
    headers = {"HTTP_HX_REQUEST": "true"} if case.htmx else {}
    return getattr(client, case.method)(url, data, **headers)


_TOKEN = re.compile(rb"[A-Za-z0-9]{64}")  # masked CSRF tokens differ per response


def _normalised(content: bytes) -> bytes:
    return _TOKEN.sub(b"<token>", content)


def _missing_args(args: list) -> list:
    return [MISSING_PK if isinstance(a, int) else "no-such-team" for a in args]


@pytest.mark.parametrize(("name", "case", "persona"), list(_cells()))
def test_isolation_matrix(name, case, persona, world, django_capture_on_commit_callbacks):
    expected = case.expect[persona]
    url = reverse(name, args=case.args(world))
    client = world.client(persona)
    data = case.data(world) if case.data else {}
    with django_capture_on_commit_callbacks() as queued:
        response = _request(client, case, url, data)
    where = f"{case.method.upper()} {url} as {persona}"
    assert response.status_code == expected.status, (
        f"{where}: {response.status_code}, expected {expected.status}"
        + (f" (Location {response.get('Location')})" if response.has_header("Location") else ""))
    if expected.to is not None:
        to, location = expected.location(world), response["Location"]
        assert location == to if expected.exact else location.startswith(to), (
            f"{where}: redirected to {location}, expected {to}{'' if expected.exact else '…'}")

    body = response.content.decode(errors="replace")
    echoed = " ".join(map(str, data.values()))  # what they typed may be echoed back in a form
    others = ACME_MARKERS if persona in ("anonymous", "other_admin") else RIVAL_MARKERS
    leaked = [m for m in others if m in body and m not in echoed]
    assert not leaked, f"{where}: shows another team's {leaked}"

    if case.effect is not None:
        changed = case.effect(world, client)
        assert changed == bool(expected.effect), \
            f"{where}: acme's state {'changed' if changed else 'unchanged'}"
        if not expected.effect and persona in case.own_team_job:
            assert len(queued) == 1, f"{where}: {len(queued)} job wake-up(s) for her own team's job"
        elif not expected.effect:
            assert queued == [], f"{where}: a refused action queued {len(queued)} job wake-up(s)"
    else:
        assert queued == [], f"{where}: a page queued {len(queued)} job wake-up(s)"

    if case.check is not None and response.status_code == 200:
        case.check(world, persona, response)

    if persona == "other_admin" and expected.status == 404:
        # No leak of existence: an id that exists in acme answers exactly like one that exists nowhere.
        missing = reverse(name, args=_missing_args(case.args(world)))
        with django_capture_on_commit_callbacks():
            other = _request(client, case, missing, data)
        assert other.status_code == response.status_code, f"{where}: {missing} answers {other.status_code}"
        assert _normalised(other.content) == _normalised(response.content), \
            f"{where}: the 404 for acme's object differs from the 404 for {missing}"


# --- the Django admin, as a group -------------------------------------------------------------

_CONVERTER = re.compile(r"<(?:(?P<conv>\w+):)?(?P<arg>\w+)>")


def _admin_objects(w: World) -> dict[str, int]:
    """An existing acme object of each admin model (by ``app_model``)."""
    from mergehub.accounts.models import Membership

    return {"accounts_team": w.acme.pk, "accounts_membership": Membership.objects.get(user=w.users["admin"]).pk,
            "auth_user": w.users["admin"].pk, "registry_family": w.base.family_id,
            "registry_checkpoint": w.experts[0].pk, "registry_indexjob": w.active_job.pk,
            "runs_mergerun": w.queued_run.pk}


def admin_urls(w: World) -> list[tuple[str, str]]:
    """(label, path) for every pattern under admin/, ids filled with acme's objects."""
    from django.contrib.contenttypes.models import ContentType

    from mergehub.runs.models import MergeRun

    objects = _admin_objects(w)
    run_ct = ContentType.objects.get_for_model(MergeRun).pk
    urls = []
    for route, name, namespaces in url_patterns():
        if not namespaces or namespaces[0] != "admin":
            continue
        label = name or f"admin route {route}"
        model = next((k for k in objects if route.startswith(f"admin/{k.replace('_', '/', 1)}/")), None)
        values = {"object_id": objects.get(model, 1), "id": w.users["admin"].pk,
                  "content_type_id": run_ct}
        if name == "admin:view_on_site":
            values["object_id"] = w.queued_run.pk
        if "(?P<app_label>" in route:  # the app index: one per app label
            for app in re.search(r"\(\?P<app_label>([^)]*)\)", route)[1].split("|"):
                urls.append((f"{name} {app}", f"/admin/{app}/"))
            continue
        if "(?P<url>" in route:  # the catch-all
            urls.append((label, "/admin/no-such-page/"))
            continue
        path = _CONVERTER.sub(lambda m: str(values[m["arg"]]), route)
        assert "<" not in path and "(" not in path, f"admin route {route} not filled: {path}"
        urls.append((label, "/" + path))
    return urls


# By URL name; anything else: a redirect to the admin login. Non-staff at the admin's logout
# are sent to the admin index (Django's admin_view), which sends them on to the admin login.
ADMIN_EXPECTED = {"admin:login": OK, "admin:logout": redirect("/admin/")}
ADMIN_DEFAULT = Answer(302, to="/admin/login/?next=")


@pytest.mark.parametrize("persona", PERSONAS)
def test_admin_site_is_staff_only(persona, world, django_capture_on_commit_callbacks):
    """Every admin URL (all of them, named or not) redirects non-staff to the admin login;
    a POST that would add mallory to acme as an admin changes nothing."""
    from mergehub.accounts.models import Membership

    client = world.client(persona)
    urls = admin_urls(world)
    assert len(urls) > 50 and any(label.endswith("_changelist") for label, _ in urls)
    problems = []
    for label, path in urls:
        response = client.get(path)
        want = ADMIN_EXPECTED.get(label.split(" ")[0], ADMIN_DEFAULT)
        if response.status_code != want.status:
            problems.append(f"GET {path} ({label}): {response.status_code}, expected {want.status}")
        elif want.to is not None and not (response["Location"] == want.to if want.exact
                                          else response["Location"].startswith(want.to)):
            problems.append(f"GET {path} ({label}): redirected to {response['Location']}, expected {want.to}")
        body = response.content.decode(errors="replace")
        if any(m in body for m in ACME_MARKERS):
            problems.append(f"GET {path} ({label}): shows acme's objects")
    with django_capture_on_commit_callbacks() as queued:
        response = client.post(reverse("admin:accounts_membership_add"),
                               {"user": world.users["other_admin"].pk, "team": world.acme.pk, "role": "admin"})
    if response.status_code != 302 or not response["Location"].startswith("/admin/login/"):
        problems.append(f"POST membership add: {response.status_code} {response.get('Location')}")
    assert not problems, "\n".join(problems)
    assert not Membership.objects.filter(team=world.acme, user=world.users["other_admin"]).exists()
    assert queued == []
