from django.urls import path

from . import views

app_name = "accounts"

# "switch" is a route, not a team: services.RESERVED_SLUGS keeps teams from taking it.
urlpatterns = [
    path("", views.team_list, name="teams"),
    path("switch/", views.switch_team, name="switch_team"),
    path("<slug:slug>/", views.team_detail, name="team"),
    path("<slug:slug>/leave/", views.team_leave, name="leave"),
    path("<slug:slug>/review-policy/", views.review_policy, name="review_policy"),
    path("<slug:slug>/members/<int:pk>/role/", views.member_role, name="member_role"),
    path("<slug:slug>/members/<int:pk>/remove/", views.member_remove, name="member_remove"),
]
