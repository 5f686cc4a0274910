"""Which layer a tensor belongs to, read from its name (torch-free: pages use it too)."""

from __future__ import annotations

import re
from typing import Iterable

# The first "<layers|layer|h|blocks|block>.<N>" component names the layer: model.layers.12...,
# transformer.h.3..., model.decoder.layers.7..., blocks.5..., encoder.block.2.layer.1 (-> 2).
_LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?=\.|$)")


def layer_index(tensor_name: str) -> int | None:
    """The layer a tensor belongs to (model.layers.12.mlp... -> 12); None outside the layers."""
    match = _LAYER_PATTERN.search(tensor_name)
    return int(match.group(1)) if match else None


def count_layers(tensor_names: Iterable[str]) -> int:
    """Number of layers: the largest layer index + 1, or 0 when no tensor is inside a layer."""
    indices = [i for i in map(layer_index, tensor_names) if i is not None]
    return max(indices) + 1 if indices else 0
