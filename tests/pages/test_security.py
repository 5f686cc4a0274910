"""Team isolation and roles through the pages: another team's user gets 404 on every page and
action for acme's objects; a viewer cannot start, cancel, retry, register or re-index. Logins are
throttled per user and per address; every page carries the Content-Security-Policy."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun
from tests.pages.conftest import merge_post

pytestmark = pytest.mark.django_db


def _acme_urls(registered_family, run):
    expert, base = registered_family["experts"][0], registered_family["base"]
    gets = [reverse("registry:detail", args=[expert.pk]), reverse("registry:detail", args=[base.pk]),
            reverse("registry:status", args=[expert.pk]), reverse("runs:detail", args=[run.pk]),
            reverse("runs:live", args=[run.pk]), reverse("accounts:team", args=["acme"])]
    job = expert.index_jobs.first()
    posts = [reverse("registry:reindex", args=[expert.pk]), reverse("runs:cancel", args=[run.pk]),
             reverse("runs:retry", args=[run.pk]), reverse("accounts:team", args=["acme"]),
             reverse("registry:cancel_index", args=[expert.pk, job.pk]),
             reverse("registry:retry_index", args=[expert.pk, job.pk])]
    return gets, posts


def test_other_team_gets_404_on_every_page_and_action(mallory_client, registered_family, queued_run,
                                                      django_capture_on_commit_callbacks):
    gets, posts = _acme_urls(registered_family, queued_run)
    for url in gets:
        assert mallory_client.get(url).status_code == 404, url
    with django_capture_on_commit_callbacks() as queued:
        for url in posts:
            assert mallory_client.post(url, {"username": "mallory", "role": "admin"}).status_code == 404, url
        assert mallory_client.post(reverse("accounts:switch_team"), {"team": "acme"}).status_code == 404
    assert queued == []
    queued_run.refresh_from_db()
    assert queued_run.status == "queued" and not queued_run.cancel_requested
    assert MergeRun.objects.count() == 1


def test_other_team_sees_none_of_acmes_objects_in_lists(mallory_client, registered_family, succeeded_run):
    for name in ("dashboard:dashboard", "registry:list", "runs:list", "runs:new"):
        html = mallory_client.get(reverse(name)).content.decode()
        assert "tiny-llama" not in html and succeeded_run.name not in html, name
        assert "expert-1" not in html, name
    assert mallory_client.get(reverse("dashboard:dashboard")).context["stats"]["bytes_saved_total"] == 0


def test_other_team_cannot_merge_or_preview_acmes_checkpoints(mallory_client, registered_family,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        response = mallory_client.post(reverse("runs:new"), merge_post(registered_family))
        preview = mallory_client.post(reverse("runs:preview"), merge_post(registered_family))
    assert response.status_code == 200 and response.context["form"].errors  # not a choice for her team
    assert preview.context["plan"] is None
    assert queued == [] and MergeRun.objects.count() == 0


def test_other_team_cannot_register_into_acme(mallory_client, family, rival):
    """Registration always goes to the user's own current team."""
    response = mallory_client.post(reverse("registry:register"), {
        "name": "sneaky", "role": "base", "family_name": "tiny-llama", "source": "local",
        "local_path": str(family["base"])})
    assert response.status_code == 302
    assert Checkpoint.objects.get(name="sneaky").team == rival


def test_viewer_cannot_start_a_merge(bob_client, registered_family, django_capture_on_commit_callbacks):
    page = bob_client.get(reverse("runs:new"))
    assert page.status_code == 200 and b"Viewers cannot start merges" in page.content
    with django_capture_on_commit_callbacks() as queued:
        response = bob_client.post(reverse("runs:new"), merge_post(registered_family))
    assert response.status_code == 403
    assert queued == [] and MergeRun.objects.count() == 0


def test_viewer_may_preview_a_plan(bob_client, registered_family):
    response = bob_client.post(reverse("runs:preview"), merge_post(registered_family))
    assert response.context["plan"]["planned_expert_bytes"] > 0


def test_viewer_cannot_cancel_or_retry(bob_client, queued_run, succeeded_run, django_capture_on_commit_callbacks):
    html = bob_client.get(reverse("runs:detail", args=[queued_run.pk])).content.decode()
    assert reverse("runs:cancel", args=[queued_run.pk]) not in html
    with django_capture_on_commit_callbacks() as queued:
        assert bob_client.post(reverse("runs:cancel", args=[queued_run.pk])).status_code == 403
        assert bob_client.post(reverse("runs:retry", args=[succeeded_run.pk])).status_code == 403
    queued_run.refresh_from_db()
    assert queued_run.status == "queued" and not queued_run.cancel_requested
    assert queued == [] and MergeRun.objects.count() == 2


def test_viewer_cannot_register_or_reindex(bob_client, registered_family, family, django_capture_on_commit_callbacks):
    before = Checkpoint.objects.count()
    with django_capture_on_commit_callbacks() as queued:
        response = bob_client.post(reverse("registry:register"), {
            "name": "bobs", "role": "expert", "family_name": "tiny-llama", "source": "local",
            "local_path": str(family["experts"][1])})
        assert response.status_code == 403
        expert = registered_family["experts"][0]
        assert bob_client.post(reverse("registry:reindex", args=[expert.pk])).status_code == 403
    assert queued == [] and Checkpoint.objects.count() == before
    expert.refresh_from_db()
    assert expert.index_status == "ready"


def test_viewer_cannot_add_members(bob_client, acme):
    assert bob_client.post(reverse("accounts:team", args=["acme"]),
                           {"username": "bob", "role": "admin"}).status_code == 403
    assert acme.memberships.get(user__username="bob").role == "viewer"


def test_csrf_is_enforced(alice, registered_family, queued_run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("runs:cancel", args=[queued_run.pk])).status_code == 403
    assert client.post(reverse("runs:new"), merge_post(registered_family)).status_code == 403
    queued_run.refresh_from_db()
    assert queued_run.status == "queued"
    # The page hands htmx the token it needs for its POSTs.
    page = client.get(reverse("runs:new"))
    assert b'<meta name="csrf-token" content="' in page.content


def test_not_found_page_does_not_say_whose_object_it_is(mallory_client, queued_run):
    response = mallory_client.get(reverse("runs:detail", args=[queued_run.pk]))
    assert response.status_code == 404
    assert b"belongs to a team you are not a member of" in response.content
    assert queued_run.name.encode() not in response.content


def test_user_without_a_team_sees_nothing_and_cannot_act(django_user_model, registered_family, queued_run):
    loner = django_user_model.objects.create_user(username="loner", password="x")
    client = Client()
    client.force_login(loner)
    dashboard = client.get(reverse("dashboard:dashboard"))
    assert b"not in a team yet" in dashboard.content and queued_run.name.encode() not in dashboard.content
    assert client.get(reverse("registry:register")).status_code == 403
    assert client.get(reverse("runs:new")).status_code == 403
    assert client.post(reverse("runs:preview"), merge_post(registered_family)).status_code == 403
    assert client.get(reverse("runs:detail", args=[queued_run.pk])).status_code == 404
    assert list(client.get(reverse("runs:list")).context["runs"]) == []


# --- login throttling (django-axes) -------------------------------------------------------------

LIMIT = 10  # LOGIN_FAILURE_LIMIT's default
ATTACKER, ELSEWHERE = "203.0.113.7", "198.51.100.20"


@pytest.fixture
def fast_passwords(settings, alice, bob, carol):
    """Each login checks a password: hash the personas' cheaply (MD5) for the many logins here."""
    from tests.conftest import PASSWORD

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for user in (alice, bob, carol):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])


def _login(username, password, *, ip, path="/login/"):
    client = Client(REMOTE_ADDR=ip)
    response = client.post(path, {"username": username, "password": password})
    return response, "_auth_user_id" in client.session


def _fail(n, username="alice", *, ip=ATTACKER, path="/login/"):
    return [_login(username, "wrong password", ip=ip, path=path)[0].status_code for _ in range(n)]


def test_too_many_failures_lock_that_user_and_that_address(fast_passwords):
    from tests.conftest import PASSWORD

    assert _fail(LIMIT + 1) == [200] * (LIMIT - 1) + [429, 429]
    response, logged_in = _login("alice", PASSWORD, ip=ATTACKER)
    assert response.status_code == 429 and not logged_in  # the right password, refused
    html = response.content.decode()
    assert "Login temporarily locked" in html and "until" in html
    assert 14 * 60 < int(response["Retry-After"]) <= 15 * 60
    assert "Content-Security-Policy" in response

    assert _login("alice", PASSWORD, ip=ELSEWHERE)[0].status_code == 429  # the user, from anywhere
    assert _login("carol", PASSWORD, ip=ATTACKER)[0].status_code == 429  # anyone, from that address
    response, logged_in = _login("bob", PASSWORD, ip=ELSEWHERE)  # someone else, elsewhere: fine
    assert response.status_code == 302 and logged_in


def test_the_lock_lifts_after_the_cool_off(fast_passwords):
    from axes.models import AccessAttempt
    from django.db.models import F

    from tests.conftest import PASSWORD

    _fail(LIMIT)
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=14))  # 14 min later
    response, logged_in = _login("alice", PASSWORD, ip=ATTACKER)
    assert response.status_code == 429 and int(response["Retry-After"]) <= 60 and not logged_in
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=1, seconds=1))
    response, logged_in = _login("alice", PASSWORD, ip=ATTACKER)
    assert response.status_code == 302 and logged_in


def test_admin_login_failures_count_too(fast_passwords, admin_user):
    from tests.conftest import PASSWORD

    assert _fail(LIMIT, "admin", path="/admin/login/")[-1] == 429
    response, logged_in = _login("admin", "password", ip=ELSEWHERE, path="/admin/login/")  # its password
    assert response.status_code == 429 and not logged_in
    assert _login("alice", PASSWORD, ip=ATTACKER)[0].status_code == 429  # and the address is locked


def test_client_address_comes_from_the_proxy_header_only_behind_the_proxy(settings, rf):
    from mergehub.accounts.throttling import client_ip

    request = rf.post("/login/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9")
    settings.MERGEHUB_TRUST_X_FORWARDED_FOR = False
    assert client_ip(request) == "10.0.0.2"  # exposed directly, the header is the client's invention
    settings.MERGEHUB_TRUST_X_FORWARDED_FOR = True
    assert client_ip(request) == "203.0.113.9"  # the entry the proxy appended, not the client's own
    settings.MERGEHUB_TRUSTED_PROXIES = 2
    assert client_ip(request) == "1.2.3.4"
    settings.MERGEHUB_TRUSTED_PROXIES = 1
    assert client_ip(rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="not-an-ip")) == "10.0.0.2"
    assert client_ip(rf.get("/", REMOTE_ADDR="10.0.0.2")) == "10.0.0.2"


# --- Content-Security-Policy ---------------------------------------------------------------------

def _csp(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return {d.split()[0]: " ".join(d.split()[1:]) for d in policy.split(";") if d.strip()}


def test_every_page_carries_the_content_security_policy(alice_client, admin_client, registered_family,
                                                        alice, rival):
    from mergehub.accounts.models import Membership

    Membership.objects.create(user=alice, team=rival, role="viewer")  # so pages show the team switcher
    pages = [alice_client.get(reverse("dashboard:dashboard")), alice_client.get(reverse("runs:new")),
             alice_client.get(reverse("registry:detail", args=[registered_family["experts"][0].pk])),
             Client().get(reverse("login")), alice_client.get("/no/such/page/"),
             Client().get("/admin/login/"), admin_client.get("/admin/"), admin_client.get("/admin/auth/user/")]
    assert [p.status_code for p in pages] == [200, 200, 200, 200, 404, 200, 200, 200]
    for page in pages:
        policy = _csp(page)
        assert policy["script-src"] == "'self'", policy
        assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'"
        assert policy["base-uri"] == "'self'" and policy["frame-ancestors"] == "'none'"
        assert policy["form-action"] == "'self'"
    for page in pages[:5]:  # our own pages carry no inline script (JSON data blocks are not run)
        html = page.content.decode()
        assert re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html) == []
        assert not re.search(r"\son[a-z]+=", html)
    assert b'id="team-switch"' in pages[0].content
