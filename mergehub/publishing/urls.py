"""Getting a run's merged model out: its files one by one, all of them as one streamed tar, and
pushes to the Hugging Face Hub. Mounted under /runs/ beside the run pages (mergehub/urls.py)."""

from django.urls import path

from . import views

app_name = "publishing"

urlpatterns = [
    path("<int:pk>/model/files/<str:name>", views.download_file, name="file"),
    path("<int:pk>/model/archive.tar", views.download_archive, name="archive"),
    path("<int:pk>/model/push/", views.push, name="push"),
    path("<int:pk>/model/pushes/<int:push_pk>/cancel/", views.push_cancel, name="push_cancel"),
]
