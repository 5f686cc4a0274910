"""Log-likelihood of continuations given contexts, in length-sorted batches.

Each row is context + continuation, left-padded so that rows end together; logits are computed
for the last positions only (those that predict a continuation token), which keeps memory at
rows x continuation x vocabulary rather than rows x sequence x vocabulary. A batch whose logits
would pass LOGITS_BUDGET_BYTES is run in smaller parts.
"""

from __future__ import annotations

from typing import Callable

from .batching import left_padded, length_batches
from .model import LoadedModel

LOGITS_BUDGET_BYTES = 256 * 1024 * 1024  # float32 logits of one forward pass


def continuation_logprobs(lm: LoadedModel, rows: list[tuple[list[int], list[int]]], batch_size: int,
                          check: Callable[[], None] = lambda: None,
                          done: Callable[[list[int]], None] = lambda rows: None) -> list[float]:
    """Summed log-probability of each row's continuation tokens given its context tokens (each
    context holds at least one token). ``done`` gets the indices of the rows of each finished
    forward pass. Call inside ``torch.inference_mode()``."""
    vocab = getattr(lm.model.config, "vocab_size", None) or len(lm.tokenizer)
    totals = [0.0] * len(rows)
    for batch in length_batches([len(ctx) + len(cont) for ctx, cont in rows], batch_size):
        longest_continuation = max(len(rows[i][1]) for i in batch)
        rows_per_pass = max(1, LOGITS_BUDGET_BYTES // (longest_continuation * vocab * 4))
        for start in range(0, len(batch), rows_per_pass):
            part = batch[start:start + rows_per_pass]
            check()
            for i, total in zip(part, _score_pass(lm, [rows[i] for i in part])):
                totals[i] = total
            done(part)
    return totals


def _score_pass(lm: LoadedModel, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    import torch

    inputs = [(context + continuation)[:-1] for context, continuation in rows]
    ids, mask, positions = left_padded(inputs, pad_id=0, device=lm.device)
    keep = max(len(continuation) for _, continuation in rows)
    logits, _ = lm.forward(ids, mask, positions, logits_to_keep=keep, use_cache=False)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    # continuations end at the last column, like their rows: right-align targets the same way
    targets = torch.zeros((len(rows), keep), dtype=torch.long)
    valid = torch.zeros((len(rows), keep), dtype=torch.bool)
    for r, (_, continuation) in enumerate(rows):
        targets[r, keep - len(continuation):] = torch.tensor(continuation, dtype=torch.long)
        valid[r, keep - len(continuation):] = True
    picked = logprobs.gather(-1, targets.to(lm.device)[..., None])[..., 0]
    return torch.where(valid.to(lm.device), picked, 0.0).sum(-1).tolist()
