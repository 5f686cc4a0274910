from django.urls import path

from . import views

app_name = "registry"

urlpatterns = [
    path("", views.checkpoint_list, name="list"),
    path("new/", views.register, name="register"),
    path("<int:pk>/", views.checkpoint_detail, name="detail"),
    path("<int:pk>/status/", views.checkpoint_status, name="status"),
    path("<int:pk>/reindex/", views.reindex, name="reindex"),
    path("<int:pk>/delete/", views.delete, name="delete"),
    path("<int:pk>/index/<int:job_pk>/cancel/", views.cancel_index, name="cancel_index"),
    path("<int:pk>/index/<int:job_pk>/retry/", views.retry_index, name="retry_index"),
]
