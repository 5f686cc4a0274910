from django.urls import path

from . import views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="list"),
    path("new/", views.run_new, name="new"),
    path("new/fields/", views.operator_fields, name="operator_fields"),
    path("new/preview/", views.preview, name="preview"),
    path("new/import/", views.import_yaml, name="import_yaml"),
    path("compare/", views.compare, name="compare"),
    path("<int:pk>/", views.run_detail, name="detail"),
    path("<int:pk>/live/", views.run_live, name="live"),
    path("<int:pk>/config.yaml", views.config_yaml, name="config_yaml"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/retry/", views.retry, name="retry"),
    path("<int:pk>/notes/", views.notes, name="notes"),
]
