"""A tiny randomly initialised Llama with a character-level tokenizer, for tests and benchmarks.

The tokenizer is a ``tokenizers`` BPE model with no merges (one token per character), a Fuse
decoder (decoding joins characters) and a post-processor that puts ``<s>`` before every text,
so it adds a BOS token by default like Llama's. ``tokenizer_config.json`` names
``PreTrainedTokenizerFast``: transformers 5 would write "TokenizersBackend", which 4.x cannot load.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = string.ascii_lowercase + string.digits[:4] + " :=\n"  # with the 4 special: 38 tokens
VOCAB = {tok: i for i, tok in enumerate(SPECIAL + tuple(CHARACTERS))}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def save_char_tokenizer(model_dir: Path, add_bos: bool = True, model_max_length: int = 128) -> None:
    from tokenizers import Tokenizer, decoders, models, processors

    tok = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tok.save(str(model_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tiny_model(model_dir, *, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128,
                     context: int = 128, seed: int = 0, add_bos: bool = True) -> Path:
    """Write a random LlamaForCausalLM (safetensors) and its char tokenizer into ``model_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=intermediate,
                         max_position_embeddings=context, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                         pad_token_id=PAD_ID, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir, safe_serialization=True)
    save_char_tokenizer(model_dir, add_bos=add_bos, model_max_length=context)
    return model_dir
