"""Merge runs through the API.

    GET  /api/v1/runs/                     the team's runs, newest first (?status=, ?method=), paginated
    POST /api/v1/runs/                     {"config": <mergekit YAML text or object>, "budget": "0.1", ...}
                                           → 201 {"id", "status", "url"}; with an Idempotency-Key header,
                                           the same request sent again gets the first run back (200)
    GET  /api/v1/runs/{id}/                status, stage, progress, plan, metrics, error, manifest,
                                           evaluation scores
    POST /api/v1/runs/{id}/cancel/         cancel (a running merge stops at its next block)
    POST /api/v1/runs/{id}/retry/          queue the same merge again → 201 {"id", "status", "url"}
    GET  /api/v1/runs/{id}/config.yaml     the run as mergekit YAML (text/yaml)

The config's models name the team's checkpoints (runs.yaml_config); the merge itself is
checked, planned and queued by runs.services.create_run, as from the merge form.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.utils.functional import lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from mergehub.evaluation.selectors import benchmark_for_run, tasks_by_reference
from mergehub.runs import selectors, services, yaml_config
from mergehub.runs.forms import operator_names
from mergehub.runs.models import MergeRun

from .base import Pagination, TeamScopedMixin
from .evaluation import BenchmarkSerializer, benchmark_data
from .jobs import (JOB_FIELDS, ApiUrlField, ConfigField, QueuedSerializer, ReferenceListField, TextOrNumberField,
                   api_url, block_size_of, queued, sketch_rank_field)

NOT_FOUND = "No such run."
IDEMPOTENCY_HEADER = "Idempotency-Key"


# --- serializers ------------------------------------------------------------------------------

class RunSerializer(serializers.ModelSerializer):
    """A run as the list shows it (no plan, metrics or manifest: see the run itself)."""

    url = ApiUrlField("api-run-detail")
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    base = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    retry_of = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = MergeRun
        fields = [*JOB_FIELDS, "name", "author", "method", "base", "budget", "seed", "block_size", "sketch_rank",
                  "measure_deviation", "expert_bytes_saved", "retry_of"]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    """A run with its inputs, plan, measured metrics, manifest and evaluation scores."""

    checkpoints = serializers.SerializerMethodField()
    config = serializers.SerializerMethodField()
    config_yaml_url = serializers.SerializerMethodField()
    evaluation = serializers.SerializerMethodField()
    evaluate_tasks = serializers.ListField(source="evaluate_task_ids", child=serializers.IntegerField(), read_only=True)
    plan = serializers.DictField(read_only=True, help_text="The engine's plan: planned and full expert bytes (of "
                                                           "them, sketch_bytes in low-rank sketches and block_bytes "
                                                           "in exact blocks), the error certificate, blocks planned, "
                                                           "per expert.")
    metrics = serializers.DictField(read_only=True, help_text="Measured once the run succeeded: bytes read and "
                                                              "written (expert_bytes_* count exact blocks, "
                                                              "sketch_bytes_* the sketches), time split, deviation.")
    manifest = serializers.DictField(read_only=True, help_text="The output's manifest: inputs with file hashes, "
                                                               "plan digest, output file hashes.")

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "worker", "checkpoints", "config", "config_yaml_url", "plan", "metrics",
                  "manifest", "output_path", "evaluate_tasks", "evaluation"]
        read_only_fields = fields

    @extend_schema_field({"type": "object", "properties": {
        "base": {"type": "object", "nullable": True, "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}},
        "experts": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}}}}}})
    def get_checkpoints(self, run) -> dict:
        """The base and the experts (in the config's order), as they are named now."""
        config = run.config or {}
        ids = config.get("checkpoint_ids") or {}
        order = [ids.get(entry.get("model")) for entry in config.get("models") or []]
        experts = sorted(run.experts.all(), key=lambda c: (order.index(c.pk) if c.pk in order else len(order), c.pk))
        base = {"id": run.base.pk, "name": run.base.name} if run.base else None
        return {"base": base, "experts": [{"id": c.pk, "name": c.name} for c in experts]}

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_config(self, run) -> dict:
        """The mergekit mapping the engine ran (model paths are the checkpoints' directories)."""
        return services.engine_mapping(run.config or {})

    @extend_schema_field(OpenApiTypes.URI)
    def get_config_yaml_url(self, run) -> str:
        return api_url(self.context.get("request"), "api-run-config-yaml", run.pk)

    @extend_schema_field(BenchmarkSerializer(allow_null=True))
    def get_evaluation(self, run) -> dict | None:
        return benchmark_data(self.context.get("request"), benchmark_for_run(run))


class RunCreateSerializer(serializers.Serializer):
    config = ConfigField()
    budget = TextOrNumberField(required=False, allow_blank=True, max_length=50,
                               help_text="The expert-read budget: a fraction in (0, 1] like 0.25, or a size like "
                                         "512MB. Default: the budget in the config's mergehub section, if any.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    seed = serializers.IntegerField(required=False, min_value=0,
                                    help_text="Seeds random operators (DARE, DELLA). Default: the config's mergehub "
                                              "section, else 0.")
    block_size = TextOrNumberField(required=False, allow_blank=True, max_length=50,
                                   help_text="Bytes or e.g. 1MiB. Default: the config's mergehub section, else the "
                                             "site's block size.")
    measure_deviation = serializers.BooleanField(required=False,
                                                 help_text="Also compute the full-read merge to report the deviation.")
    sketch_rank = sketch_rank_field()
    evaluate_tasks = ReferenceListField(required=False, help_text="Evaluation tasks (ids or names) to score the "
                                                                  "merged model on once it succeeds.")
    queue = serializers.CharField(required=False, allow_blank=True, help_text="The worker queue (e.g. cpu, gpu).")


# --- views ------------------------------------------------------------------------------------

# Listed when the schema is rendered: the engine's operator registry imports torch.
METHOD_NAMES = lazy(operator_names, list)()


class RunList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = RunSerializer
    pagination_class = Pagination

    def get_queryset(self):
        params = self.request.query_params
        status_filter, method = params.get("status") or None, params.get("method") or None
        if status_filter and status_filter not in MergeRun.Status.values:
            raise serializers.ValidationError({"status": [f"Choose one of {', '.join(MergeRun.Status.values)}."]})
        runs = selectors.runs_for(user=self.request.user, team=self.team, status=status_filter, method=method)
        return selectors.for_listing(runs).select_related("base", "retry_of")

    @extend_schema(parameters=[
        OpenApiParameter("status", enum=MergeRun.Status.values, description="Only runs in this status."),
        OpenApiParameter("method", enum=METHOD_NAMES, description="Only runs of this merge method.")])
    def get(self, request, *args, **kwargs):
        """The token's team's merge runs, newest first."""
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=RunCreateSerializer,
        parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, location=OpenApiParameter.HEADER, required=False,
                                     description="Any unique text (e.g. a UUID): the same request sent again with "
                                                 "this key gets the run the first one queued (200) instead of a "
                                                 "second run.")],
        responses={201: QueuedSerializer,
                   200: OpenApiResponse(QueuedSerializer, description="An earlier request with this key queued it.")})
    def post(self, request):
        """Check, plan and queue a merge of a mergekit config (nothing is queued if it does not plan)."""
        key = services.check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
        earlier = selectors.run_for_idempotency_key(team=self.team, user=request.user, key=key)
        if earlier is not None:
            return _queued(request, earlier, created=False)
        body = RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        inputs = yaml_config.inputs_from_config(self.team, data["config"], field="config")
        noted = yaml_config.settings_from_config(data["config"], field="config")  # the mergehub section

        def given(name, default=None):
            value = data.get(name)
            return value if value not in (None, "") else noted.get(name, default)

        run, created = services.create_run_once(
            user=request.user, team=self.team, idempotency_key=key, **inputs, name=data.get("name", ""),
            budget=given("budget", ""), seed=given("seed", 0), block_size=block_size_of(given("block_size")),
            measure_deviation=bool(given("measure_deviation", False)), queue=data.get("queue") or None,
            sketch_rank=given("sketch_rank"),
            evaluate_tasks=tasks_by_reference(team=self.team, refs=data.get("evaluate_tasks"), field="evaluate_tasks"))
        return _queued(request, run, created=created)


def _queued(request, run: MergeRun, *, created: bool) -> Response:
    body = queued(request, run, "api-run-detail")
    headers = {"Location": body["url"]} if created else {"Idempotent-Replayed": "true"}
    return Response(QueuedSerializer(body).data, headers=headers,
                    status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _run_queryset():
    return MergeRun.objects.select_related("team", "author", "base", "retry_of")


class RunDetail(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(responses=RunDetailSerializer)
    def get(self, request, pk):
        """One run: status, stage, progress, plan, metrics, error, manifest and evaluation scores."""
        run = self.get_scoped(_run_queryset(), pk)
        return Response(RunDetailSerializer(run, context={"request": request}).data)


class RunCancel(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(request=None, responses=RunSerializer)
    def post(self, request, pk):
        """Cancel the run: a queued run at once, a running one at its next block."""
        run = services.cancel_run(run=self.get_scoped(_run_queryset(), pk), user=request.user)
        return Response(RunSerializer(run, context={"request": request}).data)


class RunRetry(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(request=None, responses={201: QueuedSerializer})
    def post(self, request, pk):
        """Queue the same merge again (same config, budget, seed, sketch rank and queue; planned afresh)."""
        run = services.retry_run(run=self.get_scoped(_run_queryset(), pk), user=request.user)
        return _queued(request, run, created=True)


class RunConfigYaml(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(responses={(200, "text/yaml"): OpenApiTypes.STR})
    def get(self, request, pk):
        """The run as mergekit YAML: checkpoint paths (mergekit reads it as it is), their names and
        the run's budget, seed and block size in a ``mergehub:`` section. POST it back as the
        config of a new run to merge the same again."""
        run = self.get_scoped(_run_queryset(), pk)
        response = HttpResponse(yaml_config.config_yaml(run), content_type="text/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{yaml_config.config_filename(run)}"'
        return response
