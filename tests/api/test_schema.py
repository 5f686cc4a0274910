"""GET /api/v1/schema/ (OpenAPI 3, validated) and GET /api/v1/docs/ (Swagger UI from /static/)."""

from __future__ import annotations

import re

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

SCHEMA, DOCS = "/api/v1/schema/", "/api/v1/docs/"


def api_routes(patterns=None, prefix=""):
    """Every /api/v1/ route, as the schema writes paths ({id} for <int:pk>)."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from api_routes(p.url_patterns, route)
        elif isinstance(p, URLPattern) and route.startswith("api/v1/"):
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{id}" if m[1] == "pk" else "{%s}" % m[1], route)


@pytest.fixture
def schema(alice, acme, make_token, api) -> dict:
    response = api(make_token(alice, acme)[1]).get(SCHEMA)
    assert response.status_code == 200 and response["Content-Type"].startswith("application/vnd.oai.openapi")
    return yaml.safe_load(response.content)


def test_schema_is_valid_openapi_3(schema):
    from openapi_spec_validator import validate

    validate(schema)
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "MergeHub API"


def test_schema_covers_every_api_route_and_the_bearer_scheme(schema):
    routes = set(api_routes()) - {SCHEMA, DOCS}
    assert "/api/v1/checkpoints/{id}/reindex/" in routes and "/api/v1/plans/" in routes
    missing = routes - set(schema["paths"])
    assert not missing, f"routes missing from the schema: {sorted(missing)}"
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        **schema["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("security") == [{"bearerAuth": []}], (method, path)


def test_schema_json_for_a_session_and_401_for_nobody(alice_client, api):
    response = alice_client.get(SCHEMA, {"format": "json"})
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.")
    assert api().get(SCHEMA).status_code == 401


def test_docs_page_loads_its_assets_from_static(alice_client):
    response = alice_client.get(DOCS)
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if "//" in a], f"assets from elsewhere: {assets}"
    static = [a for a in assets if a.startswith("/static/")]
    assert {a.rsplit("/", 1)[1] for a in static} >= {"swagger-ui.css", "swagger-ui-bundle.js",
                                                    "swagger-ui-standalone-preset.js"}
    for asset in static:
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"
    assert "<script>" not in html  # no inline script: the page's own script is a separate request
    script = next(a for a in assets if a.startswith(DOCS))
    js = alice_client.get(script.replace("&amp;", "&"))
    assert js.status_code == 200 and js["Content-Type"].startswith("application/javascript")
    assert "/api/v1/schema/" in js.content.decode() and "SwaggerUIBundle" in js.content.decode()


def test_docs_page_csp_allows_only_what_it_needs(alice_client):
    policy = alice_client.get(DOCS)["Content-Security-Policy"]
    directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in policy.split(";") if d.strip())
    assert directives["script-src"] == "'self'"
    assert directives["img-src"].split() == ["'self'", "blob:", "data:"]  # swagger-ui.css's icons
    assert "data:" not in alice_client.get("/")["Content-Security-Policy"]  # only on the docs page


def test_docs_page_is_for_logged_in_users(client):
    response = client.get(DOCS)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
