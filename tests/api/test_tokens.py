"""API tokens: format, hashing at rest, the management command, expiry, revocation, membership,
last use, and the team's tokens page. (What a token may do through the API: test_auth.py.)"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from mergehub.api import tokens
from mergehub.api.models import ApiToken

pytestmark = pytest.mark.django_db

TOKEN_RE = re.compile(r"mh_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
CHECKPOINTS = "/api/v1/checkpoints/"


def test_token_text_has_a_recognisable_prefix_and_is_hashed(alice, acme, make_token):
    token, text = make_token(alice, acme, write=True, name="ci")
    assert TOKEN_RE.fullmatch(text), text
    assert text.startswith(token.prefix + "_") and token.prefix.startswith("mh_") and len(token.prefix) == 11
    secret = text[len(token.prefix) + 1:]
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in token.digest and text not in repr(token.__dict__)
    assert (token.user, token.team, token.name, token.can_write) == (alice, acme, "ci", True)
    assert token.expires_at is None and token.revoked_at is None and token.last_used_at is None
    assert tokens.authenticate_token(text) == token


def test_two_tokens_differ(alice, acme, make_token):
    (a, text_a), (b, text_b) = make_token(alice, acme), make_token(alice, acme)
    assert a.prefix != b.prefix and text_a != text_b and a.digest != b.digest


def _database_text() -> str:
    """Every value of every table, as text (what a copy of the database would give away)."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if isinstance(value, bytes):
                        value = value.decode("latin-1")
                    chunks.append(str(value))
    return "\n".join(chunks)


def test_plain_token_is_nowhere_in_the_database_or_the_logs(alice, acme, alice_client, api, caplog):
    """Created on the page and by the command, then used (well and badly): neither the token
    nor its secret is in any table (axes' failure records included) or any log record."""
    caplog.set_level(logging.DEBUG)
    response = alice_client.post(f"/teams/{acme.slug}/tokens/", {"name": "page", "can_write": "on"})
    page_text = TOKEN_RE.search(response.content.decode())[0]
    out = StringIO()
    call_command("create_api_token", "--user", "alice", "--team", "acme", "--write", stdout=out)
    command_text = out.getvalue().strip().splitlines()[-1]
    for text in (page_text, command_text):
        assert api(text).get(CHECKPOINTS).status_code == 200
        assert api(text[:-1] + ("A" if text[-1] != "A" else "B")).get(CHECKPOINTS).status_code == 401
        assert api(text).post(CHECKPOINTS, {"name": "x", "role": "base", "local_path": "/nowhere"}).status_code == 400
    dump = _database_text()
    assert "api-token:mh_" in dump  # axes recorded the failures, by the token's public part only
    logs = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for text in (page_text, command_text):
        secret = text.split("_", 2)[2]
        assert text not in dump and secret not in dump
        assert text not in logs and secret not in logs


def test_error_reports_hide_the_authorization_header(alice, acme, make_token, api, monkeypatch, settings, caplog):
    """A crash while authenticating: the 500 answer, the log record and the report Django
    mails to admins (with the request's headers and the frames' variables) hide the token."""
    from django.views.debug import ExceptionReporter

    _, text = make_token(alice, acme)

    def broken(token):
        raise RuntimeError("database went away")

    monkeypatch.setattr(tokens, "_mark_used", broken)
    client = api(text)
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get(CHECKPOINTS)
    assert response.status_code == 500 and text not in response.content.decode()
    record = next(r for r in caplog.records if r.name == "django.request")
    assert record.request.META["HTTP_AUTHORIZATION"] == f"Bearer {text}"  # it was there to leak
    report = ExceptionReporter(record.request, *record.exc_info).get_traceback_text()
    assert "database went away" in report and "HTTP_AUTHORIZATION" in report
    secret = text.split("_", 2)[2]
    assert text not in report and secret not in report
    assert text not in caplog.text


def test_command_prints_the_token_as_its_last_line(alice, acme):
    out = StringIO()
    call_command("create_api_token", "--user", "alice", "--team", "acme", "--write", "--expires-days", "7",
                 "--name", "nightly", stdout=out)
    last = out.getvalue().rstrip("\n").splitlines()[-1]
    assert TOKEN_RE.fullmatch(last), out.getvalue()
    token = tokens.authenticate_token(last)
    assert token is not None and token.can_write and token.name == "nightly" and token.team == acme
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)
    out = StringIO()
    call_command("create_api_token", "--user", "alice", "--team", "acme", stdout=out)
    read_only = tokens.authenticate_token(out.getvalue().splitlines()[-1])
    assert not read_only.can_write and read_only.expires_at is None


def test_command_refuses_non_members_and_unknown_names(alice, mallory, acme):
    for args, message in ((["--user", "mallory", "--team", "acme"], "not a member of Acme"),
                          (["--user", "nobody", "--team", "acme"], "No user named"),
                          (["--user", "alice", "--team", "nope"], "No team"),
                          (["--user", "alice", "--team", "acme", "--expires-days", "0"], "1 to 3650 days")):
        with pytest.raises(CommandError, match=message):
            call_command("create_api_token", *args, stdout=StringIO())
    assert not ApiToken.objects.exists()


def test_create_checks_owner_membership_and_input(alice, bob, mallory, acme, make_token):
    with pytest.raises(PermissionDenied):
        tokens.create_token(user=bob, team=acme, name="for bob", by=alice)  # only for oneself
    with pytest.raises(PermissionDenied):
        make_token(mallory, acme)
    with pytest.raises(ValidationError) as err:
        make_token(alice, acme, name="  ")
    assert err.value.message_dict == {"name": ["Give the token a name, e.g. what will use it."]}
    with pytest.raises(ValidationError) as err:
        make_token(alice, acme, expires_days=-1)
    assert list(err.value.message_dict) == ["expires_days"]
    assert make_token(bob, acme, write=True)[0].can_write  # a viewer may hold one: the role still rules


def test_expired_token_stops_working(alice, acme, make_token, api):
    token, text = make_token(alice, acme, expires_days=1)
    assert api(text).get(CHECKPOINTS).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tokens.authenticate_token(text) is None
    response = api(text).get(CHECKPOINTS)
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_stops_working(alice, carol, acme, make_token, api):
    token, text = make_token(carol, acme)
    other, other_text = make_token(alice, acme)
    tokens.revoke_token(token=token, by=carol)
    assert token.revoked_at is not None
    assert api(text).get(CHECKPOINTS).status_code == 401
    with pytest.raises(PermissionDenied):
        tokens.revoke_token(token=other, by=carol)  # a member revokes only their own
    tokens.revoke_token(token=other, by=alice)  # an admin revokes anyone's in the team
    assert api(other_text).get(CHECKPOINTS).status_code == 401


def test_token_stops_working_when_its_user_leaves_the_team(alice, carol, acme, make_token, api):
    from mergehub.accounts.services import remove_member

    _, text = make_token(carol, acme, write=True)
    assert api(text).get(CHECKPOINTS).status_code == 200
    remove_member(team=acme, user=carol, by=alice)
    assert tokens.authenticate_token(text) is None
    assert api(text).get(CHECKPOINTS).status_code == 401


def test_token_of_a_deactivated_user_stops_working(carol, acme, make_token, api):
    _, text = make_token(carol, acme)
    carol.is_active = False
    carol.save()
    assert api(text).get(CHECKPOINTS).status_code == 401


def test_last_used_at_is_updated_at_most_once_a_minute(alice, acme, make_token, api):
    token, text = make_token(alice, acme)
    assert api(text).get(CHECKPOINTS).status_code == 200
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None and timezone.now() - first < timedelta(seconds=30)
    api(text).get(CHECKPOINTS)
    token.refresh_from_db()
    assert token.last_used_at == first  # within the minute: not written again
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    api(text).get(CHECKPOINTS)
    token.refresh_from_db()
    assert token.last_used_at > first - timedelta(minutes=2)


@pytest.mark.parametrize("text", ["", "mh_", "mh_0123abcd", "mh_0123abcd_short", "xx_0123abcd_" + "A" * 43,
                                  "mh_0123ABCD_" + "A" * 43, "mh_0123abcd_" + "A" * 44, "mh_0123abcd_" + "A" * 43])
def test_malformed_or_unknown_text_authenticates_nobody(text, alice, acme, make_token):
    make_token(alice, acme)
    assert tokens.authenticate_token(text) is None


# --- the team's tokens page ---------------------------------------------------------------------

def test_team_page_links_to_its_tokens(alice_client, acme):
    assert f'href="/teams/{acme.slug}/tokens/"' in alice_client.get(f"/teams/{acme.slug}/").content.decode()


def test_page_shows_a_new_token_once(carol, carol_client, acme):
    url = f"/teams/{acme.slug}/tokens/"
    response = carol_client.post(url, {"name": "laptop", "expires_days": "30"})
    assert response.status_code == 200
    body = response.content.decode()
    text = TOKEN_RE.search(body)[0]
    assert "not be shown again" in body and "no-store" in response["Cache-Control"]
    token = tokens.authenticate_token(text)
    assert token.user == carol and token.name == "laptop" and not token.can_write
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    listing = carol_client.get(url).content.decode()
    assert "laptop" in listing and token.prefix in listing and "read-only" in listing
    assert text not in listing and not TOKEN_RE.search(listing)


def test_page_form_errors(carol_client, acme):
    response = carol_client.post(f"/teams/{acme.slug}/tokens/", {"name": "", "expires_days": "0"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"name", "expires_days"}
    assert not ApiToken.objects.exists()


def test_members_see_their_own_tokens_and_admins_everyones(alice, bob, carol, acme, make_token, alice_client,
                                                         bob_client):
    make_token(carol, acme, name="carols-token")
    make_token(bob, acme, name="bobs-token")
    url = f"/teams/{acme.slug}/tokens/"
    bob_page = bob_client.get(url).content.decode()
    assert "bobs-token" in bob_page and "carols-token" not in bob_page
    alice_page = alice_client.get(url).content.decode()
    assert "bobs-token" in alice_page and "carols-token" in alice_page


def test_revoke_from_the_page(alice, bob, carol, acme, make_token, bob_client, carol_client, alice_client, api):
    token, text = make_token(carol, acme, name="carols-token")
    url = f"/teams/{acme.slug}/tokens/{token.pk}/revoke/"
    assert bob_client.post(url).status_code == 404  # not his: he cannot see it
    assert api(text).get(CHECKPOINTS).status_code == 200
    response = carol_client.post(url)
    assert response.status_code == 302 and response["Location"] == f"/teams/{acme.slug}/tokens/"
    assert api(text).get(CHECKPOINTS).status_code == 401
    assert "revoked" in carol_client.get(f"/teams/{acme.slug}/tokens/").content.decode()
    token2, _ = make_token(carol, acme, name="second")
    assert alice_client.post(f"/teams/{acme.slug}/tokens/{token2.pk}/revoke/").status_code == 302
    token2.refresh_from_db()
    assert token2.revoked_at is not None


def test_other_teams_tokens_page_is_404(mallory_client, acme, carol, make_token):
    token, _ = make_token(carol, acme)
    assert mallory_client.get(f"/teams/{acme.slug}/tokens/").status_code == 404
    assert mallory_client.post(f"/teams/{acme.slug}/tokens/", {"name": "x"}).status_code == 404
    assert mallory_client.post(f"/teams/{acme.slug}/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None and ApiToken.objects.count() == 1
