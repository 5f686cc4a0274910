"""What a token may do: authentication answers, team scoping, roles, write tokens, throttling,
and the error answers (the exception handler)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from mergehub.accounts.models import Membership, Role
from tests.api.conftest import bearer

pytestmark = pytest.mark.django_db

CHECKPOINTS = "/api/v1/checkpoints/"


def test_no_token_is_401_with_a_bearer_challenge(api, alice):
    response = api().get(CHECKPOINTS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json() == {"detail": "Authentication credentials were not provided."}


@pytest.mark.parametrize("header", ["Token abc", "Basic YWxpY2U6cHc=", "Bearer", "Bearer a b",
                                    "Bearer mh_00000000_" + "A" * 43, "Bearer mh_é"])
def test_other_schemes_and_bad_tokens_are_401(header, api, alice, acme, make_token):
    make_token(alice, acme)
    client = api()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(CHECKPOINTS)
    assert response.status_code == 401, header
    assert "mh_00000000" not in response.content.decode()


def test_a_logged_in_session_is_not_enough(alice_client):
    assert alice_client.get(CHECKPOINTS).status_code == 401
    assert alice_client.post(CHECKPOINTS, {"name": "x"}, content_type="application/json").status_code == 401


def test_a_token_sees_its_team_only(alice, acme, rival, registered_family, make_token, api):
    """alice belongs to both teams: her acme token shows acme's checkpoints, 404 for rival's."""
    from mergehub.registry.models import Checkpoint

    Membership.objects.create(user=alice, team=rival, role=Role.ADMIN)
    theirs = Checkpoint.objects.create(team=rival, name="rival-only", role="base", index_status="ready")
    _, text = make_token(alice, acme)
    names = [c["name"] for c in api(text).get(CHECKPOINTS).json()["results"]]
    assert names == ["base", "expert-1", "expert-2"]
    assert api(text).get(f"{CHECKPOINTS}{theirs.pk}/").status_code == 404
    _, rival_text = make_token(alice, rival)
    assert [c["name"] for c in api(rival_text).get(CHECKPOINTS).json()["results"]] == ["rival-only"]


def test_writes_need_a_write_token(alice, acme, registered_family, make_token, api):
    expert = registered_family["experts"][0]
    _, read_only = make_token(alice, acme)
    response = api(read_only).post(f"{CHECKPOINTS}{expert.pk}/reindex/")
    assert response.status_code == 403
    assert response.json() == {"detail": "This token is read-only; create a read-write token to make changes."}
    _, write = make_token(alice, acme, write=True)
    assert api(write).post(f"{CHECKPOINTS}{expert.pk}/reindex/").status_code == 202


def test_a_viewers_write_token_cannot_write(bob, acme, registered_family, make_token, api):
    expert = registered_family["experts"][0]
    _, text = make_token(bob, acme, write=True)
    assert api(text).get(f"{CHECKPOINTS}{expert.pk}/").status_code == 200
    response = api(text).post(f"{CHECKPOINTS}{expert.pk}/reindex/")
    assert response.status_code == 403
    assert response.json() == {"detail": "You need the member role in Acme to make changes."}
    response = api(text).post(CHECKPOINTS, {"name": "x", "role": "base", "local_path": "/x"})
    assert response.status_code == 403


def test_the_role_is_the_users_current_one(alice, carol, acme, registered_family, make_token, api):
    from mergehub.accounts.services import add_member

    expert = registered_family["experts"][0]
    _, text = make_token(carol, acme, write=True)
    add_member(team=acme, user=carol, role=Role.VIEWER, by=alice)
    assert api(text).post(f"{CHECKPOINTS}{expert.pk}/reindex/").status_code == 403
    add_member(team=acme, user=carol, role=Role.MEMBER, by=alice)
    assert api(text).post(f"{CHECKPOINTS}{expert.pk}/reindex/").status_code == 202


# --- throttling -----------------------------------------------------------------------------------

def test_repeated_bad_tokens_are_throttled_like_logins(alice, acme, make_token, api, settings):
    """LOGIN_FAILURE_LIMIT bad tokens from one address: 429 (JSON, Retry-After) for every token
    from that address, good ones included, until the cool-off ends; other addresses go on."""
    settings.AXES_FAILURE_LIMIT = 3
    _, good = make_token(alice, acme)
    bad = [f"mh_{i:08x}_" + "A" * 43 for i in range(3)]  # different token ids: the address locks
    responses = [api(text).get(CHECKPOINTS, REMOTE_ADDR="10.0.0.1") for text in bad]
    assert [r.status_code for r in responses] == [401, 401, 429]
    assert responses[-1].json()["detail"].startswith("Too many failed")  # the one that locks: JSON too
    response = api(good).get(CHECKPOINTS, REMOTE_ADDR="10.0.0.1")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert int(response["Retry-After"]) > 60
    assert response.json()["detail"].startswith("Too many failed logins or token authentications")
    assert response.json()["detail"].endswith("try again in 15 minutes.")
    assert api(good).get(CHECKPOINTS, REMOTE_ADDR="10.0.0.2").status_code == 200
    # the same address is locked out of the login page too: it is guessing credentials
    from django.test import Client

    login = Client(REMOTE_ADDR="10.0.0.1").post("/login/", {"username": "alice", "password": "wrong"})
    assert login.status_code == 429


def test_one_token_id_guessed_from_many_addresses_locks_that_id(alice, acme, make_token, api, settings):
    settings.AXES_FAILURE_LIMIT = 3
    token, good = make_token(alice, acme)
    wrong = f"{token.prefix}_" + "B" * 43
    statuses = [api(wrong).get(CHECKPOINTS, REMOTE_ADDR=f"10.0.1.{i}").status_code for i in range(3)]
    assert statuses == [401, 401, 429]
    assert api(good).get(CHECKPOINTS, REMOTE_ADDR="10.0.1.9").status_code == 429
    assert api(make_token(alice, acme)[1]).get(CHECKPOINTS, REMOTE_ADDR="10.0.1.9").status_code == 200


def test_no_token_is_not_a_failure(alice, acme, make_token, api, settings):
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(4):
        assert api().get(CHECKPOINTS).status_code == 401
    assert api(make_token(alice, acme)[1]).get(CHECKPOINTS).status_code == 200


def test_rate_throttle_for_authenticated_requests(alice, acme, make_token, api, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/minute"})
    _, text = make_token(alice, acme)
    statuses = [api(text).get(CHECKPOINTS).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


# --- the error answers ----------------------------------------------------------------------------

def _handle(exc):
    from mergehub.api.exceptions import exception_handler

    response = exception_handler(exc, {})
    return response.status_code, response.data


def test_exception_handler_maps_service_errors():
    from mergehub.engine.api import BudgetError

    assert _handle(ValidationError({"budget": "Enter a budget."})) == (400, {"budget": ["Enter a budget."]})
    assert _handle(ValidationError({"experts": ["a", "b"], "__all__": "c"})) == (
        400, {"experts": ["a", "b"], "non_field_errors": ["c"]})
    assert _handle(ValidationError("Run #3 is still running.")) == (400, {"detail": "Run #3 is still running."})
    assert _handle(BudgetError("budget too small")) == (400, {"detail": "budget too small"})
    assert _handle(PermissionDenied("You need the member role.")) == (403, {"detail": "You need the member role."})
    assert _handle(Http404("No such run.")) == (404, {"detail": "No such run."})


def test_bad_json_and_other_content_types(alice, acme, make_token, api):
    from rest_framework.test import APIClient

    _, text = make_token(alice, acme, write=True)
    client = APIClient()
    client.credentials(**bearer(text))
    response = client.post(CHECKPOINTS, data="{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]
    response = client.post(CHECKPOINTS, data={"name": "x"}, format="multipart")
    assert response.status_code == 415
    assert client.get(CHECKPOINTS, HTTP_ACCEPT="text/html").status_code == 406
