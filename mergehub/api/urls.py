"""/api/v1/: the REST API (token authentication only; see docs/api.md).

URL names start with ``api-``; the runs, evaluations, tasks and sweeps routes are in run_urls.py.
"""

from django.urls import include, path

from . import checkpoints, plans, schema

urlpatterns = [
    path("checkpoints/", checkpoints.CheckpointList.as_view(), name="api-checkpoint-list"),
    path("checkpoints/<int:pk>/", checkpoints.CheckpointDetail.as_view(), name="api-checkpoint-detail"),
    path("checkpoints/<int:pk>/reindex/", checkpoints.CheckpointReindex.as_view(), name="api-checkpoint-reindex"),
    path("plans/", plans.PlanPreview.as_view(), name="api-plan"),
    path("schema/", schema.schema_view, name="api-schema"),
    path("docs/", schema.docs_view, name="api-docs"),
    path("", include("mergehub.api.run_urls")),
]
