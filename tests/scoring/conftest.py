"""Fixtures for the scoring tests: tiny models on disk and task-file writers.

``random_model``: a randomly initialised Llama (hidden 64, 2 layers) with the char tokenizer of
mergehub.scoring.tiny_model (adds BOS). ``successor_model``: a Llama whose greedy next token is a
fixed function of the current token only (SUCCESSOR below), so its outputs can be predicted: the
attention and MLP outputs are zeroed, each token's embedding is a one-hot vector, and the LM head
maps that vector to a large logit for the token's successor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergehub.scoring.tiny_model import EOS_ID, VOCAB, save_char_tokenizer, write_tiny_model

# greedy chains: "=" -> "abc" then EOS; ":" -> "0123" then "\n"; anything else -> EOS
SUCCESSOR = {"=": "a", "a": "b", "b": "c", "c": "</s>",
             ":": "0", "0": "1", "1": "2", "2": "3", "3": "\n", "\n": "x", "x": "</s>"}
SUCCESSOR_LOGIT_SCALE = 2.0  # logit of the successor: 2 * sqrt(hidden) = 16; all others 0


def write_successor_model(model_dir: Path, hidden: int = 64) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=EOS_ID,
                         pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(len(VOCAB), hidden))
        for layer in model.model.layers:  # the residual stream stays the token's one-hot vector
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(len(VOCAB), hidden)
        for token, index in VOCAB.items():
            head[VOCAB[SUCCESSOR.get(token, "</s>")], index] = SUCCESSOR_LOGIT_SCALE
        model.lm_head.weight.copy_(head)
    model.save_pretrained(model_dir, safe_serialization=True)
    save_char_tokenizer(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("random") / "model", seed=0)


@pytest.fixture(scope="session")
def successor_model(tmp_path_factory) -> Path:
    return write_successor_model(tmp_path_factory.mktemp("successor") / "model")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path
