"""The family's character-level tokenizer, written as files that transformers 4.x and 5.x load.

One token per character: the special tokens ``<pad> <s> </s> <unk>`` (ids 0–3), then the 26
lowercase letters and ``: = \\n`` and space. Built with the ``tokenizers`` library as a BPE model
with no merges (so every character stays its own token) and a ``Fuse`` decoder (so decoding
joins characters without spaces). Encoding adds no special tokens: prompts are tokenized the
same whether or not a caller asks for special tokens, and training uses the same ids.

``tokenizer_config.json`` is written by hand rather than by ``save_pretrained``: transformers
5.x would record ``"tokenizer_class": "TokenizersBackend"``, which 4.x cannot load.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = string.ascii_lowercase + ":=\n "
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIAL_TOKENS)
VOCAB_SIZE = len(VOCAB)
MODEL_MAX_LENGTH = 64
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # same ids as in VOCAB: no new entries
    return tok


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (characters outside the vocabulary become ``<unk>``)."""
    return [VOCAB.get(c, UNK_ID) for c in text]


def decode(ids: list[int]) -> str:
    """Text of ``ids``, special tokens dropped."""
    inverse = {i: t for t, i in VOCAB.items()}
    return "".join(inverse[i] for i in ids if i >= len(SPECIAL_TOKENS))


def _tokenizer_config() -> dict:
    added = {str(VOCAB[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "left",  # decoder-only generation pads on the left
        "clean_up_tokenization_spaces": False,
    }


def save_tokenizer(model_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``model_dir``."""
    model_dir = Path(model_dir)
    build_tokenizer().save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
