"""Grouping examples into batches of similar length (less padding) and left-padding them."""

from __future__ import annotations

from typing import Callable, Iterator


def length_batches(lengths: list[int], batch_size: int,
                   fits: Callable[[int, int], bool] | None = None) -> Iterator[list[int]]:
    """Indices grouped into batches of at most ``batch_size``, longest first; ``fits(rows,
    longest)`` may cap a batch further (a memory budget). Callers put results back by index."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) == batch_size or (fits is not None and not fits(len(batch) + 1, longest))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def left_padded(rows: list[list[int]], pad_id: int, device: str):
    """(input_ids, attention_mask, position_ids) with every row padded on the left, so that the
    rows end together; positions count real tokens only (0 for the first real one)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)
