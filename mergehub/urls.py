"""URL map: pages per app, Django's auth views with our templates, the REST API and the admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("", include("mergehub.dashboard.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("teams/", include("mergehub.api.token_urls")),  # a team's API tokens page
    path("teams/", include("mergehub.audit.urls")),  # a team's audit log page (its admins)
    path("teams/", include("mergehub.accounts.urls")),
    path("checkpoints/", include("mergehub.registry.urls")),
    path("runs/", include("mergehub.runs.urls")),
    path("runs/", include("mergehub.reviews.urls")),  # a run's review and comments
    path("runs/", include("mergehub.publishing.urls")),
    path("evaluation/", include("mergehub.evaluation.urls")),
    path("api/v1/", include("mergehub.api.urls")),
    path("admin/", admin.site.urls),
]
