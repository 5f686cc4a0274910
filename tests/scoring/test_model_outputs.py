"""The batched greedy loop against transformers' generate, and the successor model's outputs."""

from __future__ import annotations

import random

import torch

from mergehub.scoring.greedy import cut_at_stop, greedy_batch
from mergehub.scoring.model import load_model


def test_batched_greedy_matches_generate_one_at_a_time(random_model):
    """Left padding, positions and the KV cache: every row of a mixed-length batch decodes exactly
    what generate(do_sample=False) gives that prompt alone."""
    lm = load_model(random_model, "cpu")
    rng = random.Random(1)
    prompts = ["".join(rng.choice("abcdefgh:=") for _ in range(rng.randint(1, 15))) for _ in range(12)]
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) > 5  # really mixed lengths
    with torch.inference_mode():
        batched = greedy_batch(lm, ids, max_new_tokens=12, stop="")
        stopped = greedy_batch(lm, ids, max_new_tokens=12, stop="e")  # rows leave the batch early
        for prompt_ids, output, cut in zip(ids, batched, stopped):
            out = lm.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                    dtype=torch.long), do_sample=False, max_new_tokens=12, pad_token_id=0)
            expected = lm.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)
            assert output == expected
            assert cut == expected.split("e")[0]
    assert stopped != batched  # the stop string did occur


def test_successor_model_stops_at_eos_and_stop_string(successor_model):
    lm = load_model(successor_model, "cpu")
    ids = [lm.tokenizer(p)["input_ids"] for p in ("q=", "long prompt:", "zz")]
    with torch.inference_mode():
        assert greedy_batch(lm, ids, 32, stop="") == ["abc", "0123\nx", ""]
        assert greedy_batch(lm, ids, 32, stop="\n") == ["abc", "0123", ""]
        assert greedy_batch(lm, ids, 32, stop="2") == ["abc", "01", ""]
        assert greedy_batch(lm, ids, 32, stop="12") == ["abc", "0", ""]  # a stop string over two tokens
        assert greedy_batch(lm, ids, 32, stop="3\nx") == ["abc", "012", ""]
        assert greedy_batch(lm, ids, 2, stop="\n") == ["ab", "01"] + [""]


def test_batch_stops_early_when_every_row_has_stopped(successor_model, monkeypatch):
    lm = load_model(successor_model, "cpu")
    calls = []
    real = lm.forward
    monkeypatch.setattr(lm, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        greedy_batch(lm, [lm.tokenizer("=")["input_ids"]], max_new_tokens=100, stop="")
        assert len(calls) == 4  # the prompt, then "a", "b", "c" fed back; EOS ends it
        calls.clear()
        greedy_batch(lm, [lm.tokenizer(p)["input_ids"] for p in ("=", ":")], max_new_tokens=100, stop="12")
        assert len(calls) == 4  # ":" gives "0", "1", "2": the stop string; "=" ended at EOS already


def test_cut_at_stop():
    assert cut_at_stop("ab\ncd\n", "\n") == "ab"
    assert cut_at_stop("abc", "") == "abc"
    assert cut_at_stop("abc", "x") == "abc"
