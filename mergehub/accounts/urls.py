from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("switch/", views.switch_team, name="switch_team"),
    path("<slug:slug>/", views.team_detail, name="team"),
]
