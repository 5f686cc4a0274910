"""A small but loadable tokenizer for synthetic models: a word-level vocabulary of ``vocab``
tokens (``<unk>``, ``<s>``, ``</s>``, then ``w3`` … ``w{vocab-1}``) split on whitespace, in the
``tokenizers`` JSON format that ``PreTrainedTokenizerFast`` reads."""

from __future__ import annotations

import json

SPECIAL = ("<unk>", "<s>", "</s>")


def tokenizer_files(vocab: int) -> dict[str, str]:
    words = {tok: i for i, tok in enumerate(SPECIAL)}
    words.update((f"w{i}", i) for i in range(len(SPECIAL), vocab))
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, tok in enumerate(SPECIAL)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": json.dumps(tokenizer, separators=(",", ":")) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
    }
