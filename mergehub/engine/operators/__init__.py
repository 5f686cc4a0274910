"""Merge operators, registered by mergekit method name."""

from .base import REQUIRED, MergeContext, Operator, Param, TensorParams
from .registry import OPERATORS, get_operator

__all__ = ["REQUIRED", "MergeContext", "Operator", "Param", "TensorParams", "OPERATORS",
           "get_operator"]
