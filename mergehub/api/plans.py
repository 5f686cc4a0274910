"""Plan previews through the API: what a merge would read under a budget, without queueing it.

    POST /api/v1/plans/   {"config": <mergekit YAML text or a JSON object>, "budget": "0.1"}

The body is a run's (POST runs/) as far as the plan goes: config, budget, block_size and
sketch_rank, with the same defaults from the config's ``mergehub:`` section (an exported run plans as it ran).

The config names the team's checkpoints as a run's config does (runs.yaml_config translates it);
the answer is the engine's plan: planned and full expert bytes (the planned ones split into
low-rank sketches and exact blocks), the error certificate, blocks planned of the total, and
the same per expert. It reads the index only and changes nothing, so
a read-only token (and a viewer) may ask.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from mergehub.runs import services as runs
from mergehub.runs.yaml_config import inputs_from_config, settings_from_config

from .base import TeamScopedMixin
from .jobs import ConfigField, TextOrNumberField, block_size_of, sketch_rank_field


class PlanRequestSerializer(serializers.Serializer):
    """The plan-relevant part of a run's body (POST runs/)."""

    config = ConfigField()
    budget = TextOrNumberField(required=False, allow_blank=True, max_length=50,
                               help_text="The expert-read budget: a fraction in (0, 1] like 0.25, or a size like "
                                         "512MB. Default: the budget in the config's mergehub section, if any.")
    block_size = TextOrNumberField(required=False, allow_blank=True, max_length=50,
                                   help_text="Bytes or e.g. 1MiB. Default: the config's mergehub section, else the "
                                             "site's block size.")
    sketch_rank = sketch_rank_field()


class PerExpertPlanSerializer(serializers.Serializer):
    checkpoint_id = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    path = serializers.CharField()
    full_bytes = serializers.IntegerField()
    nonzero_bytes = serializers.IntegerField()
    planned_bytes = serializers.IntegerField()
    sketch_bytes = serializers.IntegerField(default=0, help_text="Of planned_bytes, the low-rank sketches' share.")
    sketches_planned = serializers.IntegerField(default=0)
    blocks_planned = serializers.IntegerField()
    blocks_total = serializers.IntegerField()


class PlanSerializer(serializers.Serializer):
    budget = serializers.CharField()
    budget_bytes = serializers.IntegerField()
    planned_expert_bytes = serializers.IntegerField()
    full_expert_bytes = serializers.IntegerField()
    nonzero_expert_bytes = serializers.IntegerField()
    certificate = serializers.FloatField(allow_null=True, help_text="Bound on ‖θ_plan − θ_full‖₂ (additive "
                                                                    "operators with fixed coefficients; else null).")
    blocks_planned = serializers.IntegerField()
    blocks_total = serializers.IntegerField()
    block_size = serializers.IntegerField()
    sketch_rank = serializers.IntegerField(default=0, help_text="Rank of the sketches the plan may use (0: none).")
    sketch_bytes = serializers.IntegerField(default=0, help_text="Of planned_expert_bytes, the low-rank sketches' "
                                                                 "share; the rest, block_bytes, is exact blocks.")
    block_bytes = serializers.IntegerField(default=0)
    sketches_planned = serializers.IntegerField(default=0, help_text="(expert, tensor) sketches the plan reads.")
    sketches_available = serializers.IntegerField(default=0)
    plan_digest = serializers.CharField()
    per_expert = PerExpertPlanSerializer(many=True)


class PlanPreview(TeamScopedMixin, APIView):
    changes_nothing = True  # a POST that only computes: read-only tokens may

    @extend_schema(request=PlanRequestSerializer, responses=PlanSerializer)
    def post(self, request):
        """The plan a merge of this config would run under the budget (nothing is queued)."""
        body = PlanRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        inputs = inputs_from_config(self.team, data["config"], field="config")
        noted = settings_from_config(data["config"], field="config")  # an exported run's mergehub section
        budget = data.get("budget") or noted.get("budget", "")
        block_size = block_size_of(data.get("block_size") or noted.get("block_size"))
        sketch_rank = data.get("sketch_rank")
        plan = runs.preview_plan(user=request.user, team=self.team, budget=budget, block_size=block_size,
                                 sketch_rank=sketch_rank if sketch_rank is not None else noted.get("sketch_rank"),
                                 **inputs)
        experts = [checkpoint for checkpoint, _ in inputs.get("experts", [])]
        per_expert = [dict(entry, checkpoint_id=experts[k].pk if k < len(experts) else None)
                      for k, entry in enumerate(plan.get("per_expert", []))]
        return Response(PlanSerializer({**plan, "per_expert": per_expert}).data)
