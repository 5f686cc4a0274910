from django.urls import path

from . import views

app_name = "evaluation"

urlpatterns = [
    path("tasks/", views.task_list, name="tasks"),
    path("tasks/<int:pk>/delete/", views.task_delete, name="task_delete"),
    path("family/train/", views.family_train, name="family_train"),
    path("family/<int:pk>/live/", views.family_live, name="family_live"),
    path("family/<int:pk>/cancel/", views.family_cancel, name="family_cancel"),
    path("runs/<int:pk>/evaluate/", views.evaluate_run, name="evaluate_run"),
    path("checkpoints/<int:pk>/evaluate/", views.evaluate_checkpoint, name="evaluate_checkpoint"),
    path("evaluations/<int:pk>/", views.evaluation_detail, name="detail"),
    path("evaluations/<int:pk>/live/", views.evaluation_live, name="live"),
    path("evaluations/<int:pk>/cancel/", views.evaluation_cancel, name="cancel"),
    path("evaluations/<int:pk>/retry/", views.evaluation_retry, name="retry"),
    path("sweeps/", views.sweep_list, name="sweeps"),
    path("sweeps/new/", views.sweep_new, name="sweep_new"),
    path("sweeps/<int:pk>/", views.sweep_detail, name="sweep"),
    path("sweeps/<int:pk>/live/", views.sweep_live, name="sweep_live"),
    path("sweeps/<int:pk>/cancel/", views.sweep_cancel, name="sweep_cancel"),
    path("sweeps/<int:pk>/retry/", views.sweep_retry, name="sweep_retry"),
]
