"""Checkpoints through the API: list, register, read one, re-index.

    GET  /api/v1/checkpoints/                 the team's checkpoints (?status=, ?role=), paginated
    POST /api/v1/checkpoints/                 register one (read-write token, member role)
    GET  /api/v1/checkpoints/{id}/            one checkpoint
    POST /api/v1/checkpoints/{id}/reindex/    queue a fresh index (202)

Registration input is checked by the page's own form (registry.forms.RegisterCheckpointForm)
and then the service, so the API's messages are the form's, word for word.
"""

from __future__ import annotations

from collections.abc import Mapping

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from mergehub.registry import selectors, services
from mergehub.registry.forms import RegisterCheckpointForm
from mergehub.registry.models import Checkpoint

from .base import TeamScopedMixin, form_errors

NOT_FOUND = "No such checkpoint."


# --- serializers ------------------------------------------------------------------------------

class CheckpointSerializer(serializers.ModelSerializer):
    """A checkpoint as the list shows it."""

    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    family = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    added_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Checkpoint
        fields = ["id", "name", "team", "family", "role", "source", "local_path", "hf_repo_id", "hf_revision",
                  "path", "size_bytes", "tensor_count", "index_status", "index_error", "indexed_at",
                  "added_by", "created_at"]
        read_only_fields = fields


class CheckpointDetailSerializer(CheckpointSerializer):
    """A checkpoint with the sha256 of its weight files (filled by its index)."""

    file_hashes = serializers.DictField(child=serializers.CharField(), read_only=True,
                                        help_text="{file name: sha256}")

    class Meta(CheckpointSerializer.Meta):
        fields = [*CheckpointSerializer.Meta.fields, "file_hashes"]
        read_only_fields = fields


class RegisterCheckpointSerializer(serializers.Serializer):
    """Input of POST checkpoints/: a local directory or a Hugging Face repo (one of them).

    The fields describe the input for the schema; validation is the form's (to_internal_value).
    """

    name = serializers.CharField(max_length=200, help_text="Unique within the team.")
    role = serializers.ChoiceField(choices=Checkpoint.Role.choices)
    family_name = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                        help_text="A base: its new family's name (default: its name). "
                                                  "An expert: the family of the base it was fine-tuned from.")
    local_path = serializers.CharField(required=False, allow_blank=True,
                                       help_text="A directory of .safetensors files under one of the team's roots.")
    hf_repo_id = serializers.CharField(required=False, allow_blank=True, max_length=200,
                                       help_text="owner/name on the Hugging Face Hub (instead of local_path).")
    hf_revision = serializers.CharField(required=False, allow_blank=True, max_length=200,
                                        help_text="A branch, tag or commit; empty means main.")

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            raise serializers.ValidationError({"non_field_errors": ["Send a JSON object."]})
        values = {}
        for field in self.fields:
            value = data.get(field)
            if isinstance(value, (dict, list)):
                raise serializers.ValidationError({field: ["Enter text, not a list or an object."]})
            if value is not None:
                values[field] = str(value)
        # The form's "source" radio: a repo id alone means the Hub; anything else a local path.
        values["source"] = (Checkpoint.Source.HF if values.get("hf_repo_id", "").strip()
                            and not values.get("local_path", "").strip() else Checkpoint.Source.LOCAL)
        form = RegisterCheckpointForm(values)
        if not form.is_valid():
            raise form_errors(form)
        data = form.cleaned_data
        # Both sources go to the service, which refuses a local path and a repo id together.
        return {"name": data["name"], "role": data["role"], "family_name": data.get("family_name") or None,
                "local_path": data.get("local_path") or None, "hf_repo_id": data.get("hf_repo_id") or None,
                "hf_revision": data.get("hf_revision") or None}


# --- views ------------------------------------------------------------------------------------

class CheckpointList(TeamScopedMixin, generics.ListAPIView):
    serializer_class = CheckpointSerializer

    def get_queryset(self):
        filters = {"status": Checkpoint.IndexStatus.values, "role": Checkpoint.Role.values}
        values = {name: self.request.query_params.get(name) or None for name in filters}
        for name, value in values.items():
            if value is not None and value not in filters[name]:
                raise serializers.ValidationError({name: [f"Choose one of {', '.join(filters[name])}."]})
        checkpoints = selectors.checkpoints_for(user=self.request.user, team=self.team, **values)
        return selectors.checkpoints_for_listing(checkpoints)

    @extend_schema(parameters=[
        OpenApiParameter("status", enum=Checkpoint.IndexStatus.values, description="Only this index status."),
        OpenApiParameter("role", enum=Checkpoint.Role.values, description="Only bases or only experts.")])
    def get(self, request, *args, **kwargs):
        """The token's team's checkpoints, by name."""
        return super().get(request, *args, **kwargs)

    @extend_schema(request=RegisterCheckpointSerializer, responses={201: CheckpointDetailSerializer})
    def post(self, request):
        """Register a base or an expert (an expert is queued for indexing against its base)."""
        serializer = RegisterCheckpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        checkpoint = services.register_checkpoint(team=self.team, user=request.user, **serializer.validated_data)
        return Response(CheckpointDetailSerializer(checkpoint).data, status=status.HTTP_201_CREATED)


class CheckpointDetail(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(responses=CheckpointDetailSerializer)
    def get(self, request, pk):
        """One checkpoint of the token's team."""
        checkpoint = self.get_scoped(Checkpoint.objects.select_related("team", "family", "added_by"), pk)
        return Response(CheckpointDetailSerializer(checkpoint).data)


class CheckpointReindex(TeamScopedMixin, APIView):
    not_found = NOT_FOUND

    @extend_schema(request=None, responses={202: CheckpointDetailSerializer})
    def post(self, request, pk):
        """Queue a fresh index of the checkpoint (e.g. after its files changed or an index failed)."""
        checkpoint = self.get_scoped(Checkpoint.objects.all(), pk)
        checkpoint = services.reindex_checkpoint(checkpoint=checkpoint, user=request.user)
        return Response(CheckpointDetailSerializer(checkpoint).data, status=status.HTTP_202_ACCEPTED)
