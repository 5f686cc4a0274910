"""The family's LlamaForCausalLM: its config, a fresh seeded model, and a plain HF directory.

A model directory holds ``config.json``, ``generation_config.json`` (greedy, stops at EOS),
``model.safetensors`` (float32, tensors in sorted order) and the tokenizer files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from .recipe import MODEL_SHAPE
from .tokenizer import BOS_ID, EOS_ID, MODEL_MAX_LENGTH, PAD_ID, VOCAB_SIZE, save_tokenizer

WEIGHTS_NAME = "model.safetensors"


def model_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=MODEL_MAX_LENGTH,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS_ID,
                       eos_token_id=EOS_ID, pad_token_id=PAD_ID, **MODEL_SHAPE)


def new_model(seed: int) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config()).float()


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    model.load_state_dict(load_file(Path(model_dir) / WEIGHTS_NAME))


def _config_json() -> dict:
    """config.json as plain JSON, independent of the transformers version's extra fields."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": MODEL_MAX_LENGTH, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID, "hidden_act": "silu", "rope_theta": 10000.0,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
            **MODEL_SHAPE}


def save_model_dir(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Write ``model`` as a loadable HF model directory (the directory must exist)."""
    model_dir = Path(model_dir)
    state = {name: t.detach().to(torch.float32).contiguous().clone()
             for name, t in sorted(model.state_dict().items())}
    save_file(state, str(model_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(_config_json(), indent=2) + "\n")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
                  "do_sample": False}
    (model_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(model_dir)
