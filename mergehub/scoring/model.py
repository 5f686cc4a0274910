"""Loading a model and its tokenizer for evaluation, and the few facts the scorers need.

Weights are loaded from safetensors only (``use_safetensors=True``, no remote code). On the CPU
the model runs in float32; on CUDA in the checkpoint's own dtype (float32 if it has none).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from mergehub.engine.api import ConfigError, InvalidCheckpoint

from .fingerprint import check_model_dir

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cpu"/"cuda" are checked and kept."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    return device


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    eos_ids: frozenset           # generation stops at any of these
    context_length: int          # longest sequence the model takes
    cache_arg: str               # "cache" (transformers >= 5.2x) or "past_key_values"
    keeps_logits: bool           # forward takes logits_to_keep (logits of the last positions only)

    def forward(self, input_ids, attention_mask, position_ids, cache=None, logits_to_keep: int = 0,
                use_cache: bool = True):
        """(logits, cache) of one forward pass; logits of the last ``logits_to_keep`` positions
        (all when 0)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "use_cache": use_cache, self.cache_arg: cache}
        if self.keeps_logits and logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(**kwargs)
        logits = out.logits
        if logits_to_keep and not self.keeps_logits:
            logits = logits[:, -logits_to_keep:]
        return logits, getattr(out, self.cache_arg)


def _dtype(config, device: str):
    import torch

    if device == "cpu":
        return torch.float32
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(named, str):
        named = getattr(torch, named, None)
    return named if named in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def _eos_ids(model, tokenizer) -> frozenset:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None),
                   getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)


def _context_length(model, tokenizer) -> int:
    lengths = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    lengths = [n for n in lengths if isinstance(n, int) and 1 < n < 10**7]
    return min(lengths) if lengths else 2048


def load_model(model_dir, device: str = "auto") -> LoadedModel:
    """The model in eval mode on ``device`` and its tokenizer; InvalidCheckpoint if unloadable."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = check_model_dir(model_dir)
    device = pick_device(device)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's or a worker's output
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        # transformers renamed torch_dtype to dtype in 4.56
        dtype_arg = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                     **{dtype_arg: _dtype(config, device)})
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidCheckpoint(f"{path}: transformers cannot load it as a causal LM ({first_line})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.padding_side = "left"  # the scorers pad by hand, on the left too (batching.py)
    model.to(device).eval()
    params = inspect.signature(model.forward).parameters
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, eos_ids=_eos_ids(model, tokenizer),
                       context_length=_context_length(model, tokenizer),
                       cache_arg="cache" if "cache" in params else "past_key_values",
                       keeps_logits="logits_to_keep" in params)


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
