"""The token matrix: every /api/v1/ URL pattern × every kind of credential, with the expected answer.

Credentials (the objects are acme's, from the page matrix's world, tests/pages/test_isolation_matrix.py):

- ``none``: no Authorization header; ``bad``: a well-formed token that does not exist;
  ``expired`` and ``revoked``: carol's read-write tokens, expired or revoked;
  ``session``: alice logged in (a session cookie, no token): the API takes tokens only;
- ``read_only``: alice's (admin) read-only token; ``viewer_write``: bob's (viewer) read-write token;
- ``other_team``: mallory's (admin of rival) read-write token; ``own_team``: carol's (member) read-write token.

What the API promises, cell by cell:

- none, bad, expired, revoked, session: 401 everywhere (the schema aside: a session reads it, and the
  docs page is a page: a session reads it, anyone else is sent to log in);
- reads: every token of acme gets 200; other_team gets 404 for acme's objects (the same answer,
  status and body, as for an id that exists nowhere) and its own team's lists (nothing of acme's);
- writes: read_only and viewer_write get 403 and change nothing; other_team changes nothing of
  acme's (404 for acme's objects, 400 when its input names acme's things, which are not its team's);
  own_team succeeds; a plan preview (POST plans/) changes nothing, so every acme token may ask;
- GET on a POST-only route: 405 for any valid token (before any lookup), 401 for the rest;
- no answer shows another team's names.

``test_every_api_url_has_a_matrix_entry`` walks Django's resolver: an /api/v1/ URL added without
an entry here fails it (the page matrix covers /api/v1/ as one group that points here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import pytest
from django.urls import reverse

from tests.pages.isolation_effects import (_evaluation_cancelled, _evaluation_retried, _new_checkpoint,
                                          _new_evaluation, _new_index_job, _new_run, _new_sweep, _new_task,
                                          _queued_run_cancelled, _run_retried, _sweep_cancelled, _sweep_retried)
from tests.pages.isolation_world import ACME_MARKERS, MISSING_PK, RIVAL_MARKERS, build_world, world_settings
from tests.pages.test_isolation_matrix import url_patterns

pytestmark = pytest.mark.django_db

CREDENTIALS = ("none", "bad", "expired", "revoked", "session", "read_only", "viewer_write", "other_team",
               "own_team")
REFUSED = ("none", "bad", "expired", "revoked", "session")  # not authenticated by a token
ACME = ("read_only", "viewer_write", "own_team", "session")  # whose answers may show acme's names
BAD_TOKEN = "mh_00000000_" + "A" * 43
API_PREFIX = "api/v1/"


# --- the world ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_world(django_db_setup, django_db_blocker, tmp_path_factory):
    """The page matrix's world plus the tokens, built once for the module in a transaction rolled
    back at its end; every test runs in a savepoint of it (see the page matrix's matrix_world)."""
    from django.db import transaction
    from django.test import override_settings
    from django.utils import timezone
    from django_q.conf import Conf

    from mergehub.api.tokens import create_token, revoke_token

    root = tmp_path_factory.mktemp("token-matrix")
    with (override_settings(**world_settings(root)), pytest.MonkeyPatch.context() as patch,
          django_db_blocker.unblock()):
        patch.setattr(Conf, "SYNC", True)
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            w = build_world(root)
            users = w.users
            acme, rival = w.acme, w.rival

            def token(persona, team, write, name):
                return create_token(user=users[persona], team=team, name=name, can_write=write,
                                    by=users[persona])

            expired, w.texts = token("member", acme, True, "expired"), {"bad": BAD_TOKEN}
            expired[0].expires_at = timezone.now() - timedelta(minutes=1)
            expired[0].save()
            w.texts["expired"] = expired[1]
            revoked = token("member", acme, True, "revoked")
            revoke_token(token=revoked[0], by=users["member"])
            w.texts["revoked"] = revoked[1]
            w.texts["read_only"] = token("admin", acme, False, "read-only")[1]
            w.texts["viewer_write"] = token("viewer", acme, True, "viewer")[1]
            w.texts["other_team"] = token("other_admin", rival, True, "mallory")[1]
            w.texts["own_team"] = token("member", acme, True, "carol")[1]
        except BaseException:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)
            raise
    try:
        yield w
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def world(token_world, mergehub_env, settings):
    for name, value in token_world.settings.items():
        setattr(settings, name, value)
    return token_world


def client_for(w, credential: str):
    from rest_framework.test import APIClient

    client = APIClient()
    if credential == "session":
        client.force_login(w.users["admin"])
    elif credential != "none":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {w.texts[credential]}")
    return client


# --- expected answers -------------------------------------------------------------------------

def reads(*, other: int = 404) -> dict[str, int]:
    return {**{c: 401 for c in REFUSED}, "read_only": 200, "viewer_write": 200, "other_team": other, "own_team": 200}


def writes(success: int, *, other: int = 404) -> dict[str, int]:
    return {**{c: 401 for c in REFUSED}, "read_only": 403, "viewer_write": 403, "other_team": other,
            "own_team": success}


def post_only() -> dict[str, int]:
    return {**{c: 401 for c in REFUSED}, **{c: 405 for c in CREDENTIALS if c not in REFUSED}}


@dataclass(frozen=True)
class Case:
    method: str  # "get" or "post"
    expect: dict[str, int]
    args: Callable = lambda w: []
    data: Callable | None = None  # a JSON body (POST) or query (GET)
    effect: Callable | None = None  # (world, client) → True once acme's state changed
    changes: bool = True  # whether a POST that succeeds changes acme's state (a plan preview does not)


def _expert(i: int):
    return lambda w: [w.experts[i].pk]


def _register(w) -> dict:
    return {"name": "matrix-expert", "role": "expert", "family_name": "tiny-llama",
            "local_path": str(w.family_paths["experts"][1])}


CONFIG = ("merge_method: ties\nbase_model: base\nmodels:\n"
          "  - model: expert-1\n    parameters: {weight: 1.0, density: 0.7}\n"
          "  - model: expert-2\n    parameters: {weight: 0.5, density: 0.7}\n")


def _plan(w) -> dict:
    return {"config": CONFIG, "budget": "0.5"}


def _sweep(w) -> dict:
    return {"config": CONFIG, "budgets": "0.25, 0.5"}


def _task(w) -> dict:
    return {"name": "matrix-new-task", "kind": "auto", "path": w.task.path}


def _evaluate(w) -> dict:
    return {"checkpoint": w.base.pk, "tasks": [w.task.pk]}


def _anything_new(w, client) -> bool:
    return _new_run(w, client) or _new_checkpoint(w, client) or _new_index_job(w, client)


SCHEMA = {**{c: 401 for c in REFUSED}, "session": 200, **{c: 200 for c in CREDENTIALS if c not in REFUSED}}
DOCS = {**{c: 302 for c in CREDENTIALS}, "session": 200}  # a page: log in (tokens are for the API)

MATRIX: dict[str, list[Case]] = {
    "api-schema": [Case("get", SCHEMA)],
    "api-docs": [Case("get", DOCS)],
    "api-checkpoint-list": [
        Case("get", reads(other=200)),
        # mallory registers into rival: it has no family tiny-llama (400), nothing is registered
        Case("post", writes(201, other=400), data=_register, effect=_new_checkpoint),
    ],
    "api-checkpoint-detail": [Case("get", reads(), args=_expert(0))],
    "api-checkpoint-reindex": [
        Case("post", writes(202), args=_expert(1), effect=_new_index_job),
        Case("get", post_only(), args=_expert(1)),
    ],
    "api-plan": [  # a preview: reads the index only; acme's names are not rival's (400)
        Case("post", reads(other=400), data=_plan, effect=_anything_new, changes=False),
        Case("get", post_only()),
    ],
    # --- runs, tasks, evaluations, sweeps (run_urls.py) ---
    "api-run-list": [
        Case("get", reads(other=200)),
        Case("post", writes(201, other=400), data=_plan, effect=_new_run),
    ],
    "api-run-detail": [Case("get", reads(), args=lambda w: [w.queued_run.pk])],
    "api-run-config-yaml": [Case("get", reads(), args=lambda w: [w.queued_run.pk])],
    "api-run-cancel": [
        Case("post", writes(200), args=lambda w: [w.queued_run.pk], effect=_queued_run_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_run.pk]),
    ],
    "api-run-retry": [
        Case("post", writes(201), args=lambda w: [w.cancelled_run.pk], effect=_run_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_run.pk]),
    ],
    "api-task-list": [
        Case("get", reads(other=200)),
        # the file lies in acme's folder: not inside rival's roots (400)
        Case("post", writes(201, other=400), data=_task, effect=_new_task),
    ],
    "api-task-detail": [Case("get", reads(), args=lambda w: [w.task.pk])],
    "api-evaluation-list": [
        Case("get", reads(other=200)),
        Case("post", writes(201), data=_evaluate, effect=_new_evaluation),  # acme's checkpoint: 404
    ],
    "api-evaluation-detail": [Case("get", reads(), args=lambda w: [w.cancelled_evaluation.pk])],
    "api-evaluation-cancel": [
        Case("post", writes(200), args=lambda w: [w.queued_evaluation.pk], effect=_evaluation_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_evaluation.pk]),
    ],
    "api-evaluation-retry": [
        Case("post", writes(201), args=lambda w: [w.cancelled_evaluation.pk], effect=_evaluation_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_evaluation.pk]),
    ],
    "api-sweep-list": [
        Case("get", reads(other=200)),
        Case("post", writes(201, other=400), data=_sweep, effect=_new_sweep),
    ],
    "api-sweep-detail": [Case("get", reads(), args=lambda w: [w.cancelled_sweep.pk])],
    "api-sweep-cancel": [
        Case("post", writes(200), args=lambda w: [w.queued_sweep.pk], effect=_sweep_cancelled),
        Case("get", post_only(), args=lambda w: [w.queued_sweep.pk]),
    ],
    "api-sweep-retry": [
        Case("post", writes(201), args=lambda w: [w.cancelled_sweep.pk], effect=_sweep_retried),
        Case("get", post_only(), args=lambda w: [w.cancelled_sweep.pk]),
    ],
}


# --- coverage -----------------------------------------------------------------------------------

def api_url_keys() -> set[str]:
    """The MATRIX key of every /api/v1/ pattern: its name (a router's format-suffix variants share
    it), or its route when it has none."""
    return {name.split(":")[-1] if name else f"route:{route}"
            for route, name, _ in url_patterns() if route.startswith(API_PREFIX)}


def test_every_api_url_has_a_matrix_entry():
    found = api_url_keys()
    assert "api-checkpoint-list" in found
    missing, stale = sorted(found - set(MATRIX)), sorted(set(MATRIX) - found)
    assert not missing, f"/api/v1/ URL patterns without an entry in the token matrix: {missing}"
    assert not stale, f"token matrix entries whose URL no longer exists: {stale}"
    for name, cases in MATRIX.items():
        assert cases, name
        for case in cases:
            assert set(case.expect) == set(CREDENTIALS), name
        methods = [c.method for c in cases]
        assert len(set(methods)) == len(methods), f"{name}: one case per method"


# --- the cells ----------------------------------------------------------------------------------

def _cells():
    for name, cases in MATRIX.items():
        for case in cases:
            for credential in CREDENTIALS:
                yield pytest.param(name, case, credential, id=f"{name}-{case.method.upper()}-{credential}")


def _send(client, case: Case, url: str, data: dict):
    if case.method == "post":
        return client.post(url, data, format="json")
    return client.get(url, data)


@pytest.mark.parametrize(("name", "case", "credential"), list(_cells()))
def test_token_matrix(name, case, credential, world, django_capture_on_commit_callbacks):
    expected = case.expect[credential]
    url = reverse(name, args=case.args(world))
    client = client_for(world, credential)
    data = case.data(world) if case.data else {}
    with django_capture_on_commit_callbacks() as queued:
        response = _send(client, case, url, data)
    where = f"{case.method.upper()} {url} with {credential}"
    body = response.content.decode(errors="replace")
    assert response.status_code == expected, f"{where}: {response.status_code}, expected {expected}: {body[:300]}"

    echoed = json.dumps(data)  # what was sent may be named back in an error
    others = RIVAL_MARKERS if credential in ACME else ACME_MARKERS
    leaked = [m for m in others if m in body and m not in echoed]
    assert not leaked, f"{where}: shows another team's {leaked}"
    for text in world.texts.values():
        assert text not in body, f"{where}: echoes a token"

    if case.effect is not None:
        succeeded = case.changes and case.method == "post" and 200 <= expected < 300 and credential == "own_team"
        assert case.effect(world, client) == succeeded, f"{where}: acme's state {'un' if succeeded else ''}changed"
        if not succeeded:
            assert queued == [], f"{where}: a refused request queued {len(queued)} job wake-up(s)"
    else:
        assert queued == [], f"{where}: a read queued {len(queued)} job wake-up(s)"

    if credential == "other_team" and expected == 404:
        missing = reverse(name, args=[MISSING_PK if isinstance(a, int) else a for a in case.args(world)])
        other = _send(client, case, missing, data)
        assert (other.status_code, other.content) == (response.status_code, response.content), \
            f"{where}: acme's object answers differently from {missing}"
