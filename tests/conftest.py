"""Shared fixtures: personas (Healthchecks style) and an isolated MergeHub environment.

Personas: alice is admin of team "acme", bob is a viewer of "acme", carol is a member of
"acme", mallory is admin of team "rival". Every test that touches Django gets its own data
dir and checkpoint root under tmp_path, and django-q2 runs tasks synchronously in-process.

Services queue jobs with ``transaction.on_commit``; inside a test transaction those callbacks
only run under ``django_capture_on_commit_callbacks(execute=True)`` (pytest-django), or use the
``run_on_commit`` fixture below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.family import make_family

PASSWORD = "correct horse battery staple"
DJANGO_FIXTURES = {"_django_db_helper", "db", "transactional_db", "client", "admin_client",
                   "settings", "rf", "live_server", "django_user_model"}


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, tmp_path_factory):
    """Use a file for the SQLite test database (not :memory:) so that a worker subprocess
    (tests/jobs/test_worker.py) can open the very database the test writes."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    request.getfixturevalue("django_db_modify_db_settings_parallel_suffix")


def _uses_django(request) -> bool:
    return (request.node.get_closest_marker("django_db") is not None
            or bool(DJANGO_FIXTURES & set(request.fixturenames)))


@pytest.fixture(autouse=True)
def mergehub_env(request, tmp_path, monkeypatch):
    """Point MergeHub's data dir and checkpoint roots into tmp_path; run django-q2 tasks in sync.

    Checkpoint root: ``tmp_path`` itself (so ``make_family(tmp_path)`` is registrable);
    data dir: ``tmp_path / "data"``. Yields the settings wrapper, or None for tests that do
    not touch Django (the engine tests).
    """
    if not _uses_django(request):
        yield None
        return
    settings = request.getfixturevalue("settings")
    from django_q.conf import Conf

    settings.MERGEHUB_DATA_DIR = tmp_path / "data"
    settings.MERGEHUB_CATALOG = ""  # the catalog follows the data dir, whatever the shell exports
    settings.MERGEHUB_CHECKPOINT_ROOTS = [tmp_path]
    settings.MERGEHUB_BLOCK_SIZE = 256  # small blocks so tiny fixtures have several blocks per tensor
    settings.MERGEHUB_HEARTBEAT_TIMEOUT = 120
    settings.MERGEHUB_JOB_TIMEOUT = 600
    # every test user's password is hashed once at creation: the default PBKDF2 (a million
    # rounds, ~1 s each on a busy 2-core machine) would dominate the suite's time
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    monkeypatch.setattr(Conf, "SYNC", True)
    yield settings


@pytest.fixture
def run_on_commit(django_capture_on_commit_callbacks):
    """``with run_on_commit(): service(...)`` runs the jobs the service queued on commit."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _user(django_user_model, username: str):
    return django_user_model.objects.create_user(username=username, email=f"{username}@example.com",
                                                 password=PASSWORD)


@pytest.fixture
def acme(db):
    from mergehub.accounts.models import Team

    return Team.objects.create(name="Acme", slug="acme")


@pytest.fixture
def rival(db):
    from mergehub.accounts.models import Team

    return Team.objects.create(name="Rival", slug="rival")


@pytest.fixture
def alice(django_user_model, acme):
    from mergehub.accounts.models import Membership, Role

    user = _user(django_user_model, "alice")
    Membership.objects.create(user=user, team=acme, role=Role.ADMIN)
    return user


@pytest.fixture
def bob(django_user_model, acme):
    from mergehub.accounts.models import Membership, Role

    user = _user(django_user_model, "bob")
    Membership.objects.create(user=user, team=acme, role=Role.VIEWER)
    return user


@pytest.fixture
def carol(django_user_model, acme):
    from mergehub.accounts.models import Membership, Role

    user = _user(django_user_model, "carol")
    Membership.objects.create(user=user, team=acme, role=Role.MEMBER)
    return user


@pytest.fixture
def mallory(django_user_model, rival):
    from mergehub.accounts.models import Membership, Role

    user = _user(django_user_model, "mallory")
    Membership.objects.create(user=user, team=rival, role=Role.ADMIN)
    return user


@pytest.fixture
def family(tmp_path) -> dict[str, Path]:
    """A base and two experts on disk under the checkpoint root (see tests/fixtures/family.py)."""
    return make_family(tmp_path)


@pytest.fixture
def registered_family(family, alice, acme, run_on_commit):
    """The fixture family registered in acme by alice and indexed (sync jobs): {"base", "experts"}."""
    from mergehub.registry.services import register_checkpoint

    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="base", role="base",
                                   family_name="tiny-llama", local_path=str(family["base"]))
    experts = []
    for i, path in enumerate(family["experts"], start=1):
        with run_on_commit():
            ckpt = register_checkpoint(team=acme, user=alice, name=f"expert-{i}", role="expert",
                                       family_name="tiny-llama", local_path=str(path))
        ckpt.refresh_from_db()
        experts.append(ckpt)
    base.refresh_from_db()
    return {"base": base, "experts": experts}


@pytest.fixture
def registered_sketch_family(tmp_path, alice, acme, run_on_commit):
    """A family whose matrices are large enough for the index's low-rank sketches to pay (hidden
    128, one layer) and whose experts' deltas are of rank 2, registered in acme and indexed:
    a budgeted task_arithmetic plan reads sketches. {"base", "experts"}."""
    from mergehub.registry.services import register_checkpoint

    family = make_family(tmp_path / "lowrank", hidden=128, layers=1, delta_rank=2)
    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="lowrank-base", role="base",
                                   family_name="lowrank", local_path=str(family["base"]))
    experts = []
    for i, path in enumerate(family["experts"], start=1):
        with run_on_commit():
            ckpt = register_checkpoint(team=acme, user=alice, name=f"lowrank-expert-{i}", role="expert",
                                       family_name="lowrank", local_path=str(path))
        ckpt.refresh_from_db()
        assert ckpt.is_ready, ckpt.index_error
        experts.append(ckpt)
    base.refresh_from_db()
    return {"base": base, "experts": experts}


def sketch_merge_inputs(family: dict, budget: str = "0.25", **extra) -> dict:
    """Keyword arguments for runs.services.create_run / preview_plan: task arithmetic of both
    experts of ``registered_sketch_family``, which sketches by default."""
    return {"method": "task_arithmetic", "base": family["base"],
            "experts": [(e, {"weight": 0.5}) for e in family["experts"]], "budget": budget, **extra}


# --- logged-in clients, one per persona ---------------------------------------------------------

def _client_for(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice):
    return _client_for(alice)


@pytest.fixture
def bob_client(bob):
    return _client_for(bob)


@pytest.fixture
def carol_client(carol):
    return _client_for(carol)


@pytest.fixture
def mallory_client(mallory):
    return _client_for(mallory)
