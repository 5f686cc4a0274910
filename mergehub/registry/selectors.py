"""Reads for the registry, always scoped to the teams the user belongs to."""

from __future__ import annotations

import math

from django.db.models import QuerySet
from django.http import Http404

from mergehub.accounts.models import Team
from mergehub.accounts.selectors import teams_for
from mergehub.engine import api as engine

from .models import Checkpoint, Family, IndexJob


def checkpoints_for(*, user, team: Team | None = None, status: str | None = None,
                    role: str | None = None) -> QuerySet[Checkpoint]:
    """Checkpoints of the user's teams (of ``team`` only, if given and the user belongs to it),
    optionally only those with index status ``status`` and role ``role``."""
    qs = Checkpoint.objects.filter(team__in=teams_for(user)).select_related("team", "family", "added_by")
    if team is not None:
        qs = qs.filter(team=team)
    if status:
        qs = qs.filter(index_status=status)
    if role:
        qs = qs.filter(role=role)
    return qs


def merge_choices_for(*, user, team: Team) -> QuerySet[Checkpoint]:
    """The checkpoints of ``team`` the merge form offers (as bases and as experts): ready ones
    only. A pending, indexing or failed checkpoint is never offered; its page says why."""
    return checkpoints_for(user=user, team=team, status=Checkpoint.IndexStatus.READY)


def checkpoints_for_listing(checkpoints: QuerySet[Checkpoint]) -> QuerySet[Checkpoint]:
    """``checkpoints`` as the list page shows them: by name, family and author joined, the
    JSON columns (index stats, file hashes, the family's signature) left in the database."""
    return (checkpoints.select_related(None).select_related("family", "added_by")
            .defer("index_stats", "file_hashes", "family__signature").order_by("name", "pk"))


def get_checkpoint(*, user, pk) -> Checkpoint:
    """Http404 unless the checkpoint exists and belongs to one of the user's teams."""
    checkpoint = checkpoints_for(user=user).filter(pk=pk).first()
    if checkpoint is None:
        raise Http404("No such checkpoint.")
    return checkpoint


def index_jobs_of(*, checkpoint: Checkpoint) -> QuerySet[IndexJob]:
    """The checkpoint's index jobs, newest first (the caller has checked access to it)."""
    return IndexJob.objects.filter(checkpoint=checkpoint).select_related("author")


def get_index_job(*, user, checkpoint_pk, pk) -> IndexJob:
    """Http404 unless the index job exists, is of that checkpoint and the user's teams."""
    checkpoint = get_checkpoint(user=user, pk=checkpoint_pk)
    job = index_jobs_of(checkpoint=checkpoint).filter(pk=pk).select_related("checkpoint", "team").first()
    if job is None:
        raise Http404("No such index job.")
    return job


def families_for(*, user, team: Team | None = None) -> QuerySet[Family]:
    qs = Family.objects.filter(team__in=teams_for(user)).select_related("team", "base")
    if team is not None:
        qs = qs.filter(team=team)
    return qs


def _group_label(tensor: str, layer) -> str:
    if isinstance(layer, int):
        return f"layer {layer}"
    return tensor.removesuffix(".weight").removesuffix(".bias").removeprefix("model.")


def _group_order(label: str, layer) -> tuple:
    if isinstance(layer, int):
        return (1, layer, "")
    return (0 if "embed" in label else 2, 0, label)


def delta_norms_by_layer(*, checkpoint: Checkpoint) -> dict:
    """Delta norm ‖θ_expert − θ_base‖₂ per layer, for the checkpoint detail chart.

    A layer's norm is sqrt(Σ ‖δ_t‖²) over its tensors; tensors outside the layer stack
    (embeddings, final norm, head) are their own entries: embeddings first, then the layers in
    order, then the rest. Empty lists until the expert is indexed.
    """
    stats = (checkpoint.index_stats or {}).get("tensors", {})
    groups: dict[str, dict] = {}
    tensors = []
    for name in sorted(stats):
        entry = stats[name]
        norm = float(entry.get("delta_norm", 0.0) or 0.0)
        layer = entry["layer"] if "layer" in entry else engine.layer_index(name)
        label = _group_label(name, layer)
        group = groups.setdefault(label, {"order": _group_order(label, layer), "sq": 0.0})
        group["sq"] += norm * norm
        tensors.append({"name": name, "layer": layer, "delta_norm": norm,
                        "max_abs": entry.get("max_abs"), "nonzero_fraction": entry.get("nonzero_fraction"),
                        "bytes": entry.get("bytes")})
    ordered = sorted(groups.items(), key=lambda kv: kv[1]["order"])
    return {"layers": [label for label, _ in ordered],
            "norms": [math.sqrt(g["sq"]) for _, g in ordered],
            "tensors": tensors}
