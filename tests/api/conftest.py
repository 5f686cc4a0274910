"""Fixtures for the API tests: tokens for the personas and a client that sends them.

DRF's rate throttle keeps its counts in Django's cache, which outlives a test's database
transaction: each test starts with it empty.
"""

from __future__ import annotations

import pytest


def bearer(text: str) -> dict:
    """Request headers (test client keyword arguments) that send ``text`` as the token."""
    return {"HTTP_AUTHORIZATION": f"Bearer {text}"}


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_token(db):
    """``make_token(user, team, write=False, expires_days=None, name="test")`` → (ApiToken, text)."""
    from mergehub.api.tokens import create_token

    def make(user, team, *, write: bool = False, expires_days: int | None = None, name: str = "test"):
        return create_token(user=user, team=team, name=name, can_write=write, expires_days=expires_days, by=user)

    return make


@pytest.fixture
def api():
    """``api(text)``: a DRF test client sending the token ``text`` (none for None); JSON bodies."""
    from rest_framework.test import APIClient

    def client(text: str | None = None) -> APIClient:
        c = APIClient()
        if text is not None:
            c.credentials(**bearer(text))
        return c

    return client


# Clients of acme's viewer (read-only token), acme's member (write token) and rival's admin.
@pytest.fixture
def reader(bob, acme, make_token, api):
    return api(make_token(bob, acme)[1])


@pytest.fixture
def writer(carol, acme, make_token, api):
    return api(make_token(carol, acme, write=True)[1])


@pytest.fixture
def outsider(mallory, rival, make_token, api):
    return api(make_token(mallory, rival, write=True)[1])
