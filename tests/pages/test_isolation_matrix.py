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
``matrix_world``), so each cell costs only its requests. The world lives in
``isolation_world.py``, the effects, request data and checks in ``isolation_effects.py``, and
the table (MATRIX, with the Answer helpers below) in ``isolation_cases.py``.

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

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.pages.isolation_cases import KNOWN_BUGS, MATRIX, OK, Answer, Case, redirect
from tests.pages.isolation_world import (ACME_MARKERS, MISSING_PK, PERSONAS, RIVAL_MARKERS, USERNAMES, World,
                                         matrix_world, world)  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


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

    # a download streams its body (publishing:file, publishing:archive)
    body = (b"".join(response.streaming_content) if response.streaming else response.content).decode(errors="replace")
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
