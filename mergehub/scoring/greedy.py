"""Batched greedy decoding with the KV cache, stopping per sequence at EOS or a stop string.

Prompts are left-padded so that every row's next token is in the last column; one forward pass
per new token feeds only that token and reuses the cache. A row stops at an EOS id or when its
decoded output contains the stop string; the batch stops when every row has (or at
``max_new_tokens``). Finished rows ride along until then (their tokens are ignored), so the
cache never has to be re-indexed. Outputs are decoded with ``skip_special_tokens=True`` and the
tokenizer's other decoding defaults, as lm-evaluation-harness decodes them.
"""

from __future__ import annotations

from typing import Callable

from .batching import left_padded
from .model import LoadedModel


def cut_at_stop(text: str, stop: str) -> str:
    """``text`` up to (not including) the first ``stop``; all of it when stop is "" or absent."""
    if stop:
        at = text.find(stop)
        if at >= 0:
            return text[:at]
    return text


class _StopFinder:
    """Which running rows' decoded outputs now hold the stop string.

    Decoding every running row at every step cost about a tenth of a tiny model's time, so a row
    is decoded only when its newest token's own text holds the stop string's last character (or
    is part of a character, U+FFFD): the stop string can only just have appeared there. Should
    this miss one (a tokenizer that decodes a token differently alone and in context), the row
    only runs on; its output is cut at the first stop string all the same.
    """

    def __init__(self, tokenizer, stop: str):
        self.tokenizer, self.stop = tokenizer, stop
        self.may_end_stop: dict[int, bool] = {}

    def _may_end_stop(self, token: int) -> bool:
        if token not in self.may_end_stop:
            piece = self.tokenizer.decode([token], skip_special_tokens=True)
            self.may_end_stop[token] = self.stop[-1] in piece or "\ufffd" in piece
        return self.may_end_stop[token]

    def stopped(self, rows: list[int], generated: list[list[int]]) -> set[int]:
        candidates = [r for r in rows if self._may_end_stop(generated[r][-1])]
        if not candidates:
            return set()
        texts = self.tokenizer.batch_decode([generated[r] for r in candidates], skip_special_tokens=True)
        return {r for r, text in zip(candidates, texts) if self.stop in text}


def greedy_batch(lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int, stop: str,
                 check: Callable[[], None] = lambda: None) -> list[str]:
    """Decoded continuation of every prompt (token ids), EOS dropped, cut at the first ``stop``.
    Call inside ``torch.inference_mode()``; ``check`` runs before every forward pass."""
    import torch

    finder = _StopFinder(lm.tokenizer, stop) if stop else None
    ids, mask, positions = left_padded(prompts, pad_id=0, device=lm.device)
    check()
    logits, cache = lm.forward(ids, mask, positions, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    generated: list[list[int]] = [[] for _ in prompts]
    running = list(range(len(prompts)))
    for step in range(max_new_tokens):
        tokens = logits[:, -1].argmax(-1)
        chosen = tokens.tolist()
        still = []
        for row in running:
            if chosen[row] in lm.eos_ids:
                continue
            generated[row].append(chosen[row])
            still.append(row)
        if finder is not None and still:  # a row whose output now holds the stop string is done
            stopped = finder.stopped(still, generated)
            still = [r for r in still if r not in stopped]
        running = still
        if not running or step == max_new_tokens - 1:
            break
        check()
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        logits, cache = lm.forward(tokens[:, None], mask, next_position, cache, logits_to_keep=1)
        next_position = next_position + 1
    texts = lm.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [cut_at_stop(text, stop) for text in texts]
