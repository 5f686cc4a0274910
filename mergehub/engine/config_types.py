"""The parsed merge configuration (the contract between config parsing and the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .operators.base import Operator, TensorParams


@dataclass(frozen=True)
class ModelRef:
    """One input model: where it is and its raw (unresolved) per-model parameters."""

    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # as written in the config, for messages and reports


@dataclass
class MergeConfig:
    merge_method: str
    operator: Operator
    base_model: ModelRef | None
    models: list[ModelRef]  # the non-base inputs, in config order
    parameters: dict[str, Any]  # raw global parameters (may hold gradients / filter lists)
    dtype: torch.dtype | None  # working dtype; None = promote the inputs' dtypes (mergekit)
    out_dtype: torch.dtype | None  # None = the base's dtype
    raw: dict[str, Any]  # the YAML mapping as given, for the manifest and export

    def resolve(self, tensor: str, num_layers: int) -> TensorParams:
        """Parameters for one tensor (filters matched, gradients interpolated, defaults filled)."""
        from .config import resolve_params

        return resolve_params(self, tensor, num_layers)
