"""/api/v1/ routes for merge runs, evaluation tasks, evaluations and budget sweeps (included by
urls.py). Names start with ``api-``, as the other API routes' do."""

from django.urls import path

from . import evaluation, runs

urlpatterns = [
    path("runs/", runs.RunList.as_view(), name="api-run-list"),
    path("runs/<int:pk>/", runs.RunDetail.as_view(), name="api-run-detail"),
    path("runs/<int:pk>/cancel/", runs.RunCancel.as_view(), name="api-run-cancel"),
    path("runs/<int:pk>/retry/", runs.RunRetry.as_view(), name="api-run-retry"),
    path("runs/<int:pk>/config.yaml", runs.RunConfigYaml.as_view(), name="api-run-config-yaml"),
    path("tasks/", evaluation.TaskList.as_view(), name="api-task-list"),
    path("tasks/<int:pk>/", evaluation.TaskDetail.as_view(), name="api-task-detail"),
    path("evaluations/", evaluation.EvaluationList.as_view(), name="api-evaluation-list"),
    path("evaluations/<int:pk>/", evaluation.EvaluationDetail.as_view(), name="api-evaluation-detail"),
    path("evaluations/<int:pk>/cancel/", evaluation.EvaluationCancel.as_view(), name="api-evaluation-cancel"),
    path("evaluations/<int:pk>/retry/", evaluation.EvaluationRetry.as_view(), name="api-evaluation-retry"),
    path("sweeps/", evaluation.SweepList.as_view(), name="api-sweep-list"),
    path("sweeps/<int:pk>/", evaluation.SweepDetail.as_view(), name="api-sweep-detail"),
    path("sweeps/<int:pk>/cancel/", evaluation.SweepCancel.as_view(), name="api-sweep-cancel"),
    path("sweeps/<int:pk>/retry/", evaluation.SweepRetry.as_view(), name="api-sweep-retry"),
]
