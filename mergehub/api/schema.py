"""The OpenAPI schema (drf-spectacular) and its Swagger UI, served from local static files.

- ``GET /api/v1/schema/``: OpenAPI 3 (YAML, or JSON with ``?format=json`` or ``Accept:
  application/vnd.oai.openapi+json``), for a token or a logged-in user.
- ``GET /api/v1/docs/``: Swagger UI from drf-spectacular-sidecar's files under /static/; logged-in
  users only (others are sent to log in). The page's script comes from a second request
  (SpectacularSwaggerSplitView), so the site's CSP (no inline scripts) holds; the one change the
  page needs is ``img-src data:`` for the icons in swagger-ui.css.
"""

from __future__ import annotations

from csp.decorators import csp_update
from django.contrib.auth.decorators import login_required
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes authentication.BearerTokenAuthentication in the schema."""

    target_class = "mergehub.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "mh_<id>_<secret>",
                "description": "An API token from your team's page (Teams → API tokens): "
                               "Authorization: Bearer mh_…"}


schema_view = SpectacularAPIView.as_view()
docs_view = csp_update({"img-src": ["data:"]})(
    login_required(SpectacularSwaggerSplitView.as_view(url_name="api-schema")))
