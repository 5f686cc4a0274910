"""Training batches: random words turned into ``prompt + target + EOS`` token sequences.

The loss covers only the target and its EOS (prompt and padding positions are labelled -100),
so the model learns to answer a prompt, not to write prompts.
"""

from __future__ import annotations

import random

import torch

from .tasks import TASK_NAMES, get_task, held_out_words, sample_words
from .tokenizer import EOS_ID, PAD_ID, encode

IGNORE = -100  # label that the loss skips


def encode_example(task_name: str, word: str) -> tuple[list[int], list[int]]:
    """Input ids and labels of one training sequence."""
    task = get_task(task_name)
    prompt, answer = encode(task.prompt(word)), encode(task.target(word)) + [EOS_ID]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def collate(examples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence. Causal attention never lets a real token see the
    padding after it, so no attention mask is needed."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)] = torch.tensor(x)
        labels[row, :len(y)] = torch.tensor(y)
    return ids, labels


class BatchSampler:
    """Endless batches for one phase. ``focus=None``: an even mix of the four tasks (the base);
    ``focus="sort"``: ``replay_fraction`` of each batch from the even mix, the rest sort."""

    def __init__(self, rng: random.Random, batch_size: int, focus: str | None = None,
                 replay_fraction: float = 0.0):
        self.rng, self.batch_size, self.focus = rng, batch_size, focus
        self.n_mix = batch_size if focus is None else round(batch_size * replay_fraction)
        self.exclude = held_out_words()

    def _task_names(self) -> list[str]:
        # the mix's tasks cycle from a random start, so each batch's mix is as even as it can be
        start = self.rng.randrange(len(TASK_NAMES))
        names = [TASK_NAMES[(start + i) % len(TASK_NAMES)] for i in range(self.n_mix)]
        return names + [self.focus] * (self.batch_size - self.n_mix)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        names = self._task_names()
        words = sample_words(self.rng, len(names), self.exclude)
        return collate([encode_example(n, w) for n, w in zip(names, words)])
