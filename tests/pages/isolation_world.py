"""The isolation matrix's world (tests/pages/test_isolation_matrix.py): the personas and the
objects of acme and rival every cell is answered against, built once per module."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from tests.pages.conftest import ties_inputs

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
    comment: object = None  # carol's comment on the succeeded run (its review conversation)
    token_count: int = 0

    def client(self, persona: str) -> Client:
        client = Client()
        if persona != "anonymous":
            client.force_login(self.users[persona])
        return client


def world_settings(root) -> dict:
    """What tests/conftest.py's ``mergehub_env`` sets, for a directory shared by the module."""
    return {"MERGEHUB_DATA_DIR": root / "data", "MERGEHUB_CATALOG": "", "MERGEHUB_CHECKPOINT_ROOTS": [root],
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
    from mergehub.reviews.services import add_comment

    w.comment = add_comment(run=w.succeeded_run, user=users["member"], body="matrix comment")
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
