"""A team's API tokens page (under /teams/, beside the team page)."""

from django.urls import path

from . import views

app_name = "tokens"

urlpatterns = [
    path("<slug:slug>/tokens/", views.token_list, name="list"),
    path("<slug:slug>/tokens/<int:pk>/revoke/", views.token_revoke, name="revoke"),
]
