"""A team's audit log page (under /teams/, beside the team page)."""

from django.urls import path

from . import views

app_name = "audit"

urlpatterns = [
    path("<slug:slug>/audit/", views.audit_log, name="log"),
]
