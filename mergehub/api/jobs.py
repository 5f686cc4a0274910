"""What the API's job endpoints (runs, evaluations, sweeps) share: the job fields every one of
them shows, the answer to "queued" (``{"id", "status", "url"}``), absolute links to other API
objects, and the text-or-mapping config field of runs and sweeps."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.functional import lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from mergehub.engine import api as engine
from mergehub.engine.api import ConfigError, parse_block_size
from mergehub.jobs.models import Job
from mergehub.runs.forms import sketch_rank_defaults


def api_url(request, name: str, pk) -> str:
    """The absolute URL of the API route ``name`` (run_urls.py) for object ``pk``, in the URL
    namespace the request came through."""
    namespace = getattr(getattr(request, "resolver_match", None), "namespace", "")
    url = reverse(f"{namespace}:{name}" if namespace else name, args=[pk])
    return request.build_absolute_uri(url) if request is not None else url


@extend_schema_field(OpenApiTypes.URI)
class ApiUrlField(serializers.Field):
    """The object's absolute API URL (``view_name`` is a route name of run_urls.py)."""

    def __init__(self, view_name: str, **kwargs):
        self.view_name = view_name
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("source", "pk")
        super().__init__(**kwargs)

    def to_representation(self, pk):
        return api_url(self.context.get("request"), self.view_name, pk)


JOB_FIELDS = ["id", "url", "status", "stage", "progress", "error", "queue", "cancel_requested", "attempts",
              "created_at", "started_at", "finished_at"]


class QueuedSerializer(serializers.Serializer):
    """The answer to a request that queued a job (or found the one an earlier request queued)."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Job.Status.choices)
    url = serializers.URLField(help_text="The job's API URL: poll it for status, progress and results.")


def queued(request, job, view_name: str) -> dict:
    return {"id": job.pk, "status": job.status, "url": api_url(request, view_name, job.pk)}


class ConfigField(serializers.JSONField):
    """A mergekit config: YAML text, or the same as a JSON object (runs.yaml_config reads both)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "A mergekit config, as YAML text or the same as a JSON object. base_model "
                                       "and each models[].model name one of the team's checkpoints by name, id, "
                                       "path or Hub id (owner/name[@revision]). A run's exported YAML "
                                       "(runs/{id}/config.yaml) works as it is.")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, (str, dict)):
            raise serializers.ValidationError("Send the config as YAML text or as a JSON object.")
        return data


class TextOrNumberField(serializers.CharField):
    """A value typed as text but sent as a JSON number too (budgets, block sizes): kept as text."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or isinstance(data, (list, dict)):
            raise serializers.ValidationError("Enter text or a number.")
        return super().to_internal_value(data)


class ReferenceListField(serializers.ListField):
    """A list of the team's objects by id or name (evaluation tasks)."""

    child = serializers.JSONField()

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        if any(not isinstance(v, (int, str)) or isinstance(v, bool) for v in values):
            raise serializers.ValidationError("List ids (numbers) or names (text).")
        return values


def _sketch_rank_help() -> str:
    return ("Rank of the low-rank sketches of each expert's delta that a budgeted plan may read in place "
            "of exact blocks it leaves out (their bytes count against the budget): a whole number from 0 "
            f"(off) to {engine.MAX_SKETCH_RANK}, at most the rank the experts were indexed with. Default: the "
            f"config's mergehub section, else the method's default ({sketch_rank_defaults()}).")


# Lazy: the engine's numbers are looked up (importing torch) when the schema is first rendered.
SKETCH_RANK_HELP = lazy(_sketch_rank_help, str)()


def sketch_rank_field(**kwargs) -> serializers.IntegerField:
    """The optional ``sketch_rank`` of a run, plan or sweep body (checked by
    runs.services.check_sketch_rank, with the engine's rule)."""
    return serializers.IntegerField(required=False, allow_null=True, help_text=SKETCH_RANK_HELP, **kwargs)


def block_size_of(value) -> int | None:
    """A block size as sent (bytes, or e.g. "1MiB"); None (the site's default) when not sent."""
    if value in (None, ""):
        return None
    try:
        return parse_block_size(int(value) if str(value).strip().isdigit() else str(value).strip())
    except ConfigError as err:
        raise ValidationError({"block_size": str(err)}) from None
