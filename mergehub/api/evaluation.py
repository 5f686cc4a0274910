"""Evaluation through the API: the team's tasks, evaluation jobs and budget sweeps.

    GET  /api/v1/tasks/                     the team's evaluation tasks, paginated
    POST /api/v1/tasks/                     register one: {"name", "path"} (JSON), or multipart with "upload"
    GET  /api/v1/tasks/{id}/                one task
    GET  /api/v1/evaluations/               the team's evaluations, newest first
    POST /api/v1/evaluations/               {"run": id} or {"checkpoint": id}, with "tasks": [ids or names]
    GET  /api/v1/evaluations/{id}/          status and scores
    POST /api/v1/evaluations/{id}/cancel/   cancel; .../retry/ queues it again
    GET  /api/v1/sweeps/                    the team's sweeps, newest first
    POST /api/v1/sweeps/                    {"config": <mergekit YAML>, "budgets": "0.1, 0.25, 1", "tasks": [...]}
    GET  /api/v1/sweeps/{id}/               status, one point per budget (two with sketches on: "sketch" and
                                            "blocks"), the references' scores
    POST /api/v1/sweeps/{id}/cancel/        cancel; .../retry/ queues it again

Views parse and call the evaluation services (task_registry, services, sweeps) and selectors;
the task form of the page checks a registration, so its messages are the page's.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from django import forms
from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from mergehub.evaluation import selectors, services, sweeps, task_registry
from mergehub.evaluation.forms import RegisterTaskForm
from mergehub.evaluation.models import EvalTask, EvaluationJob, SweepJob
from mergehub.evaluation.selectors import Benchmark
from mergehub.registry.models import Checkpoint
from mergehub.runs.forms import import_query
from mergehub.runs.models import MergeRun
from mergehub.runs.yaml_config import inputs_from_config, settings_from_config

from .base import Pagination, TeamScopedMixin, form_errors, get_scoped_or_404
from .jobs import (JOB_FIELDS, ApiUrlField, ConfigField, QueuedSerializer, ReferenceListField, TextOrNumberField,
                   block_size_of, queued, sketch_rank_field)

# --- tasks ------------------------------------------------------------------------------------


@extend_schema_field({"type": "string", "description": "Where the task file came from: builtin (the demo "
                                                      "family's), local (a path) or upload."})
class TaskSourceField(serializers.CharField):
    """EvalTask.source as plain text (an enum here would collide with the checkpoints' "source")."""


class TaskSerializer(serializers.ModelSerializer):
    url = ApiUrlField("api-task-detail")
    source = TaskSourceField(read_only=True)
    added_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = EvalTask
        fields = ["id", "url", "name", "description", "kind", "metric", "higher_is_better", "settings",
                  "n_examples", "source", "content_hash", "added_by", "created_at"]
        read_only_fields = fields


class RegisterTaskSerializer(serializers.Serializer):
    """Input of POST tasks/ (describes the body for the schema; the page's form checks it)."""

    name = serializers.CharField(max_length=100, help_text="Unique within the team.")
    description = serializers.CharField(max_length=300, required=False, allow_blank=True)
    path = serializers.CharField(required=False, allow_blank=True,
                                 help_text="A .jsonl or .txt file under one of the team's roots (or send upload).")
    upload = serializers.FileField(required=False, help_text="The task file itself (multipart/form-data).")
    kind = serializers.ChoiceField(choices=["auto", *EvalTask.Kind.values], required=False, default="auto")
    max_new_tokens = serializers.IntegerField(required=False, min_value=1, max_value=1024,
                                              help_text="Exact-match tasks: tokens decoded at most (default 32).")
    stop = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                 help_text="Exact-match tasks: the stop string (default a newline).")


def _form_values(data, fields, **defaults) -> dict:
    """The request's values of a page form's fields (text, as a form posts them), files aside."""
    if not hasattr(data, "items"):
        raise serializers.ValidationError({"non_field_errors": ["Send a JSON object or a multipart form."]})
    values = dict(defaults)
    for name, field in fields.items():
        value = data.get(name)
        if value is None or isinstance(field, forms.FileField):
            continue
        if isinstance(value, (dict, list)):
            raise serializers.ValidationError({name: ["Enter text or a number, not a list or an object."]})
        values[name] = str(value)
    return values


class TaskList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = TaskSerializer
    pagination_class = Pagination
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self):
        return selectors.tasks_for(user=self.request.user, team=self.team)

    @extend_schema(responses=TaskSerializer(many=True))
    def get(self, request, *args, **kwargs):
        """The token's team's evaluation tasks, by name."""
        return super().get(request, *args, **kwargs)

    @extend_schema(request={"application/json": RegisterTaskSerializer, "multipart/form-data": RegisterTaskSerializer},
                   responses={201: TaskSerializer})
    def post(self, request):
        """Register a task from a file under the team's roots (``path``) or an uploaded one (``upload``)."""
        form = RegisterTaskForm(_form_values(request.data, RegisterTaskForm.base_fields, kind="auto"), request.FILES)
        if not form.is_valid():
            raise form_errors(form)
        task = task_registry.register_task(team=self.team, user=request.user, **form.service_kwargs())
        return Response(TaskSerializer(task, context={"request": request}).data, status=status.HTTP_201_CREATED)


class TaskDetail(TeamScopedMixin, APIView):
    not_found = "No such task."

    @extend_schema(responses=TaskSerializer)
    def get(self, request, pk):
        """One evaluation task of the token's team."""
        task = self.get_scoped(EvalTask.objects.select_related("added_by"), pk)
        return Response(TaskSerializer(task, context={"request": request}).data)


# --- scores -----------------------------------------------------------------------------------

class ScoreSerializer(serializers.Serializer):
    task = serializers.CharField(source="task_name")
    metric = serializers.CharField()
    higher_is_better = serializers.BooleanField()
    score = serializers.FloatField()
    ci_low = serializers.FloatField()
    ci_high = serializers.FloatField()
    n = serializers.IntegerField()
    seconds = serializers.FloatField()
    device = serializers.CharField()


class ScoredModelSerializer(serializers.Serializer):
    label = serializers.CharField()
    role = serializers.CharField(help_text="merge, base, expert or checkpoint")
    scores = ScoreSerializer(many=True)


class KeptSerializer(serializers.Serializer):
    expert = serializers.CharField()
    task = serializers.CharField(help_text="The task where this expert gains most over the base.")
    expert_score = serializers.FloatField()
    merge_score = serializers.FloatField()
    share = serializers.FloatField(allow_null=True, help_text="The share of the expert's score the merge keeps.")


class BenchmarkSerializer(serializers.Serializer):
    """The scores of one evaluation: every model it scored (a run's merge with its base and
    experts, or one checkpoint) on every task."""

    evaluation = serializers.DictField(help_text="{id, status, url} of the evaluation job.")
    tasks = serializers.ListField(child=serializers.CharField())
    models = ScoredModelSerializer(many=True)
    kept = KeptSerializer(many=True)


def scored_models(benchmark: Benchmark) -> list[dict]:
    """Each model the evaluation scored so far, with its scores in the benchmark's task order."""
    return [{"label": row["label"], "role": row["role"],
             "scores": [row["results"][task] for task in benchmark.tasks if task in row["results"]]}
            for row in benchmark.rows]


def benchmark_data(request, benchmark: Benchmark) -> dict | None:
    """A Benchmark (evaluation.selectors) as the API shows it; None before any evaluation."""
    if benchmark.job is None:
        return None
    return BenchmarkSerializer({"evaluation": queued(request, benchmark.job, "api-evaluation-detail"),
                                "tasks": benchmark.tasks, "models": scored_models(benchmark),
                                "kept": benchmark.kept}).data


# --- evaluations ------------------------------------------------------------------------------

class EvaluationSerializer(serializers.ModelSerializer):
    url = ApiUrlField("api-evaluation-detail")
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    run = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    checkpoint = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    retry_of = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = EvaluationJob
        fields = [*JOB_FIELDS, "author", "run", "checkpoint", "with_references", "retry_of"]
        read_only_fields = fields


class EvaluationDetailSerializer(EvaluationSerializer):
    """An evaluation with its scores: every model it scored (a run's merge, base and experts,
    or the checkpoint) on every task, and the share of each expert's best score the merge keeps."""

    tasks = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    scores = serializers.SerializerMethodField()
    kept = serializers.SerializerMethodField()

    class Meta(EvaluationSerializer.Meta):
        fields = [*EvaluationSerializer.Meta.fields, "tasks", "scores", "kept"]
        read_only_fields = fields

    def _benchmark(self, job) -> Benchmark:
        cache = self.context.setdefault("benchmarks", {})
        if job.pk not in cache:
            cache[job.pk] = selectors.benchmark_for_job(job)
        return cache[job.pk]

    @extend_schema_field(ScoredModelSerializer(many=True))
    def get_scores(self, job) -> list:
        return ScoredModelSerializer(scored_models(self._benchmark(job)), many=True).data

    @extend_schema_field(KeptSerializer(many=True))
    def get_kept(self, job) -> list:
        return KeptSerializer(self._benchmark(job).kept, many=True).data


class EvaluateSerializer(serializers.Serializer):
    run = serializers.IntegerField(required=False, help_text="A succeeded run: its merged model is scored, "
                                                             "with its base and experts for reference.")
    checkpoint = serializers.IntegerField(required=False, help_text="Or one of the team's ready checkpoints.")
    tasks = ReferenceListField(help_text="The team's evaluation tasks, by id or name.")
    with_references = serializers.BooleanField(required=False, default=True,
                                               help_text="For a run: score its base and experts too.")
    queue = serializers.CharField(required=False, allow_blank=True)

    def validate(self, data):
        if ("run" in data) == ("checkpoint" in data):
            raise serializers.ValidationError({"non_field_errors": ["Give either run or checkpoint (one of them)."]})
        return data


class EvaluationList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = EvaluationSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.evaluations_for(user=self.request.user, team=self.team)

    @extend_schema(responses=EvaluationSerializer(many=True))
    def get(self, request, *args, **kwargs):
        """The token's team's evaluations, newest first."""
        return super().get(request, *args, **kwargs)

    @extend_schema(request=EvaluateSerializer, responses={201: QueuedSerializer})
    def post(self, request):
        """Queue an evaluation of a run's merged model or of a checkpoint on some tasks."""
        body = EvaluateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        run = _scoped_or_none(request, MergeRun, data.get("run"), "No such run.")
        checkpoint = _scoped_or_none(request, Checkpoint, data.get("checkpoint"), "No such checkpoint.")
        tasks = selectors.tasks_by_reference(team=self.team, refs=data["tasks"])
        job = services.queue_evaluation(user=request.user, team=self.team, tasks=tasks, run=run, checkpoint=checkpoint,
                                        with_references=data["with_references"], queue=data.get("queue") or None)
        return _created(request, job, "api-evaluation-detail")



def _scoped_or_none(request, model, pk, message: str):
    return None if pk is None else get_scoped_or_404(request, model.objects.all(), pk, message)


def _created(request, job, view_name: str) -> Response:
    body = queued(request, job, view_name)
    return Response(QueuedSerializer(body).data, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


class EvaluationDetail(TeamScopedMixin, APIView):
    not_found = "No such evaluation."

    @extend_schema(responses=EvaluationDetailSerializer)
    def get(self, request, pk):
        """One evaluation: status, progress and, once scored, every model's scores."""
        job = self.get_scoped(EvaluationJob.objects.select_related("team", "author"), pk)
        return Response(EvaluationDetailSerializer(job, context={"request": request}).data)


class EvaluationCancel(TeamScopedMixin, APIView):
    not_found = "No such evaluation."

    @extend_schema(request=None, responses=EvaluationSerializer)
    def post(self, request, pk):
        """Cancel the evaluation (a running one stops between models)."""
        job = services.cancel_evaluation(job=self.get_scoped(EvaluationJob.objects.all(), pk), user=request.user)
        return Response(EvaluationSerializer(job, context={"request": request}).data)


class EvaluationRetry(TeamScopedMixin, APIView):
    not_found = "No such evaluation."

    @extend_schema(request=None, responses={201: QueuedSerializer})
    def post(self, request, pk):
        """Queue the evaluation again (scores already stored are reused)."""
        job = services.retry_evaluation(job=self.get_scoped(EvaluationJob.objects.all(), pk), user=request.user)
        return _created(request, job, "api-evaluation-detail")


# --- sweeps -----------------------------------------------------------------------------------

class SweepSerializer(serializers.ModelSerializer):
    url = ApiUrlField("api-sweep-detail")
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    base = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    retry_of = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = SweepJob
        fields = [*JOB_FIELDS, "name", "author", "method", "base", "budgets", "seed", "block_size", "sketch_rank",
                  "retry_of"]
        read_only_fields = fields


class SweepDetailSerializer(SweepSerializer):
    experts = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    tasks = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    points = serializers.ListField(child=serializers.DictField(), read_only=True,
                                   help_text='One per budget and mode: plan, bytes, deviation and (with tasks) scores. '
                                             'mode "sketch": the plan may use low-rank sketches (sketch_bytes of its '
                                             'planned_expert_bytes); mode "blocks": exact blocks only. With sketches '
                                             'on, every budget has both.')
    references = serializers.ListField(child=serializers.DictField(), read_only=True,
                                       help_text="The base and experts: label, role, model hash.")

    class Meta(SweepSerializer.Meta):
        fields = [*SweepSerializer.Meta.fields, "experts", "tasks", "points", "references"]
        read_only_fields = fields


class SweepCreateSerializer(serializers.Serializer):
    config = ConfigField()
    budgets = serializers.JSONField(help_text='The budgets to sweep: "0.1, 0.25, 1" or a list; the full budget '
                                              "is added as the reference when missing.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    seed = serializers.IntegerField(required=False, min_value=0)
    block_size = TextOrNumberField(required=False, allow_blank=True, help_text="Bytes or e.g. 1MiB.")
    tasks = ReferenceListField(required=False, help_text="With tasks, each budget's merge is written and scored.")
    queue = serializers.CharField(required=False, allow_blank=True)
    sketch_rank = sketch_rank_field()

    def validate_budgets(self, value):
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return ", ".join(str(v) for v in value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise serializers.ValidationError('Give the budgets as text ("0.1, 0.25, 1") or a list.')


class SweepList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = SweepSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return selectors.sweeps_for(user=self.request.user, team=self.team)

    @extend_schema(responses=SweepSerializer(many=True))
    def get(self, request, *args, **kwargs):
        """The token's team's budget sweeps, newest first."""
        return super().get(request, *args, **kwargs)

    @extend_schema(request=SweepCreateSerializer, responses={201: QueuedSerializer})
    def post(self, request):
        """Queue a sweep of one merge configuration over several budgets."""
        body = SweepCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        inputs = inputs_from_config(self.team, data["config"], field="config")
        tasks = selectors.tasks_by_reference(team=self.team, refs=data.get("tasks"))
        query, _ = import_query(inputs)
        sketch_rank = data.get("sketch_rank")
        if sketch_rank is None:  # the config's mergehub section, as a run's
            sketch_rank = settings_from_config(data["config"], field="config").get("sketch_rank")
        try:
            sweep = sweeps.create_sweep(
                user=request.user, team=self.team, **inputs, name=data.get("name", ""), budgets=data["budgets"],
                seed=data.get("seed", 0), tasks=tasks, block_size=block_size_of(data.get("block_size")),
                queue=data.get("queue") or None, form_data=parse_qs(query, keep_blank_values=True),
                sketch_rank=sketch_rank)
        except ValidationError as error:
            raise _renamed(error, {"sweep_budgets": "budgets"}) from None
        return _created(request, sweep, "api-sweep-detail")


def _renamed(error: ValidationError, names: dict[str, str]) -> ValidationError:
    """The service's error with the form's field names turned into the API's."""
    if not hasattr(error, "error_dict"):
        return error
    return ValidationError({names.get(field, field): errors for field, errors in error.error_dict.items()})


class SweepDetail(TeamScopedMixin, APIView):
    not_found = "No such sweep."

    @extend_schema(responses=SweepDetailSerializer)
    def get(self, request, pk):
        """One sweep: status, progress, one point per budget and the references' scores."""
        sweep = self.get_scoped(SweepJob.objects.select_related("team", "author"), pk)
        return Response(SweepDetailSerializer(sweep, context={"request": request}).data)


class SweepCancel(TeamScopedMixin, APIView):
    not_found = "No such sweep."

    @extend_schema(request=None, responses=SweepSerializer)
    def post(self, request, pk):
        """Cancel the sweep."""
        sweep = sweeps.cancel_sweep(sweep=self.get_scoped(SweepJob.objects.all(), pk), user=request.user)
        return Response(SweepSerializer(sweep, context={"request": request}).data)


class SweepRetry(TeamScopedMixin, APIView):
    not_found = "No such sweep."

    @extend_schema(request=None, responses={201: QueuedSerializer})
    def post(self, request, pk):
        """Queue the sweep again (inputs checked again)."""
        sweep = sweeps.retry_sweep(sweep=self.get_scoped(SweepJob.objects.all(), pk), user=request.user)
        return _created(request, sweep, "api-sweep-detail")
