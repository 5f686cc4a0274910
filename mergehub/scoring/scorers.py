"""Scoring one task on a loaded model: generate (exact match), choice (accuracy), perplexity.

Each scorer returns a ``Scored``: n, the score, its 95% interval and the first readable samples.
Prompts and documents are tokenized the tokenizer's default way (``add_special_tokens=True``:
a BOS token is added exactly when the tokenizer adds one by default); choice texts are tokenized
without special tokens and appended to the prompt's tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .batching import length_batches
from .errors import TaskError
from .greedy import greedy_batch
from .loglik import continuation_logprobs
from .model import LoadedModel
from .stats import perplexity_interval, wilson_interval
from .tasks import Task

EXCERPT_CHARS = 200


@dataclass
class Run:
    """What every scorer needs besides the task: the model, sizes, and the callbacks."""
    lm: LoadedModel
    batch_size: int
    sample_size: int
    check: Callable[[], None]          # raises Cancelled when the caller asked to stop
    advance: Callable[[int], None]     # reports that n more examples are finished


@dataclass
class Scored:
    n: int
    score: float
    ci_low: float
    ci_high: float
    samples: list[dict]


def _encode(lm: LoadedModel, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in lm.tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _fit_context(ids: list[int], room: int, task: Task, hint: str) -> list[int]:
    """The last ``room`` tokens of a prompt (the model's context is full beyond them)."""
    if room < 1:
        raise TaskError(f"{task.path}: the model's context leaves no room for a prompt; {hint}")
    if not ids:
        raise TaskError(f"{task.path}: a prompt tokenizes to nothing; give prompts the tokenizer can encode")
    return ids[-room:]


def _proportion(correct: list[bool], samples: list[dict]) -> Scored:
    n, k = len(correct), sum(correct)
    low, high = wilson_interval(k, n)
    return Scored(n=n, score=k / n, ci_low=low, ci_high=high, samples=samples)


def outputs_match(output: str, target: str, strip: bool) -> bool:
    return output.strip() == target.strip() if strip else output == target


def score_generate(task: Task, examples: tuple, run: Run) -> Scored:
    """Exact match of the greedy continuation (cut at the stop string) with the target."""
    lm, settings = run.lm, task.settings
    room = lm.context_length - settings["max_new_tokens"]
    prompts = [_fit_context(ids, room, task, "lower max_new_tokens")
               for ids in _encode(lm, [e["prompt"] for e in examples], True)]
    outputs: list[str] = [""] * len(examples)
    for batch in length_batches([len(p) for p in prompts], run.batch_size):
        texts = greedy_batch(lm, [prompts[i] for i in batch], settings["max_new_tokens"], settings["stop"],
                             run.check)
        for i, text in zip(batch, texts):
            outputs[i] = text
        run.advance(len(batch))
    correct = [outputs_match(out, e["target"], settings["strip"]) for out, e in zip(outputs, examples)]
    samples = [{"prompt": e["prompt"], "output": out, "target": e["target"], "correct": ok}
               for e, out, ok in list(zip(examples, outputs, correct))[:run.sample_size]]
    return _proportion(correct, samples)


def _per_example_progress(owners: list[int], run: Run) -> Callable[[list[int]], None]:
    """A ``done`` callback for row batches that reports an example once all its rows are done."""
    remaining: dict[int, int] = {}
    for owner in owners:
        remaining[owner] = remaining.get(owner, 0) + 1

    def done(rows: list[int]) -> None:
        finished = 0
        for row in rows:
            remaining[owners[row]] -= 1
            finished += remaining[owners[row]] == 0
        if finished:
            run.advance(finished)
    return done


def score_choice(task: Task, examples: tuple, run: Run) -> Scored:
    """Accuracy of picking the choice with the highest (optionally length-normalised) summed
    log-likelihood given the prompt; ties go to the first such choice."""
    lm, normalize = run.lm, task.settings["normalize"]
    contexts = _encode(lm, [e["prompt"] for e in examples], True)
    choice_texts = [c for e in examples for c in e["choices"]]
    continuations = _encode(lm, choice_texts, False)
    rows, owners = [], []
    for index, example in enumerate(examples):
        for _ in example["choices"]:
            continuation = continuations[len(rows)]
            if not continuation:
                raise TaskError(f"{task.path}: example {index + 1} has a choice that tokenizes to nothing; "
                                "give choices the tokenizer can encode")
            room = lm.context_length - len(continuation)
            rows.append((_fit_context(contexts[index], room, task, "shorten the choices"), continuation))
            owners.append(index)
    logprobs = continuation_logprobs(lm, rows, run.batch_size, run.check, _per_example_progress(owners, run))
    correct, samples, row = [], [], 0
    for example in examples:
        scores = []
        for text in example["choices"]:
            length = {"none": 1, "tokens": len(rows[row][1]), "bytes": len(text.encode())}[normalize]
            scores.append(logprobs[row] / length)
            row += 1
        picked = max(range(len(scores)), key=lambda i: (scores[i], -i))
        correct.append(picked == example["answer"])
        if len(samples) < run.sample_size:
            samples.append({"prompt": example["prompt"], "choices": example["choices"],
                            "answer": example["answer"], "picked": picked, "correct": picked == example["answer"],
                            "scores": [round(s, 4) for s in scores]})
    return _proportion(correct, samples)


def score_perplexity(task: Task, documents: tuple, run: Run) -> Scored:
    """Token-level perplexity over the documents: exp(total NLL / predicted tokens). Documents
    longer than the window are scored in consecutive windows; every token but a document's
    first is predicted once, from the tokens before it in its window."""
    lm = run.lm
    window = min(task.settings["window"] or lm.context_length, lm.context_length)
    ids = _encode(lm, [d["text"] for d in documents], True)
    scored = [i for i, doc in enumerate(ids) if len(doc) >= 2]
    if not scored:
        raise TaskError(f"{task.path}: every document is a single token; nothing to measure perplexity on")
    rows, owners = [], []
    for i in scored:
        for start in range(1, len(ids[i]), window - 1):
            rows.append(([ids[i][start - 1]], ids[i][start:start + window - 1]))
            owners.append(i)
    run.advance(len(documents) - len(scored))  # single-token documents: nothing to do
    logprobs = continuation_logprobs(lm, rows, run.batch_size, run.check, _per_example_progress(owners, run))
    nll = {i: 0.0 for i in scored}
    for owner, logprob in zip(owners, logprobs):
        nll[owner] -= logprob
    counts = [len(ids[i]) - 1 for i in scored]
    ppl, low, high = perplexity_interval([nll[i] for i in scored], counts)
    samples = []
    for i, count in zip(scored[:run.sample_size], counts):
        text = documents[i]["text"]
        samples.append({"text": text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…",
                        "line": documents[i]["line"], "tokens": count, "perplexity": math.exp(nll[i] / count)})
    return Scored(n=len(scored), score=ppl, ci_low=low, ci_high=high, samples=samples)


SCORERS = {"generate": score_generate, "choice": score_choice, "perplexity": score_perplexity}
