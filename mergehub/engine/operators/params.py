"""Parameter declarations shared by several operators (mergekit names and defaults)."""

from __future__ import annotations

import torch

from .base import REQUIRED, Param

WEIGHT = Param("weight", "model", float, REQUIRED,
               help="Coefficient of this model (required, may be negative).")
INT8_MASK = Param("int8_mask", "global", bool, False,
                  help="Accepted for mergekit compatibility; masks here are always compact.")


def normalize(default: bool) -> Param:
    return Param("normalize", "global", bool, default,
                 help="Divide the combined delta by the sum of the weights that contributed.")


def rescale(default: bool) -> Param:
    return Param("rescale", "global", bool, default,
                 help="After sparsifying, scale each delta back to its original L1 norm.")


def density(help_text: str) -> Param:
    return Param("density", "model", float, 1.0, help=help_text, minimum=0.0, maximum=1.0)


def accumulation_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is reduced in float32 (mergekit's choice)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32
