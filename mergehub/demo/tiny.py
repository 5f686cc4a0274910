"""Tiny synthetic checkpoint families, built in memory: the tests' fixtures.

``synthetic.py`` streams families of gigabytes and never holds a model; this module builds one
of a few kilobytes as tensors, writes it with safetensors' own writer and hands the tensors back
too, so that a test can compute the merge it expects. Both draw their Llama tensor names and
``config.json`` from ``shapes.py``.

``tiny_family(root)`` writes ``root/base`` and ``root/expert_<k>``. ``change`` picks which values
of an expert differ from its base (expert k's deltas are ``scale·(k + 1)`` times N(0, 1)):

* ``"rows"``     — half of the rows of every 2-D tensor (the rest are the base's exact bytes, so
  an index finds zero blocks there) and every 1-D tensor but the final norm;
* ``"dense"``    — every value of every tensor;
* ``"lora"``     — a rank-1 delta on layer 0's q_proj only; every other tensor is an exact copy;
* ``"low_rank"`` — 2-D tensors get a dense delta of rank ``rank``, as a fine-tune's nearly is
  (an index's low-rank sketches then hold it almost exactly); 1-D tensors change as in "rows".

The same arguments give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from mergehub.engine.api import CONFIG_DTYPE_NAMES, SHARDED_INDEX_NAME, SINGLE_FILE_NAME

from .safetensors_writer import shard_file_names
from .shapes import LlamaShape, llama_config, tensor_shapes

CHANGES = ("rows", "dense", "lora", "low_rank")
FINAL_NORM = "model.norm.weight"
LORA_TARGET = "model.layers.0.self_attn.q_proj.weight"

# The engine tests' default: hidden 8, two layers with a few of their tensors, vocabulary 24,
# untied embeddings. Small enough that a 64-byte block holds two fp32 rows.
TINY_HIDDEN = 8
TINY_SHAPES: dict[str, tuple[int, ...]] = {
    "model.embed_tokens.weight": (24, TINY_HIDDEN),
    "model.layers.0.input_layernorm.weight": (TINY_HIDDEN,),
    "model.layers.0.self_attn.q_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (2 * TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.1.input_layernorm.weight": (TINY_HIDDEN,),
    "model.layers.1.self_attn.q_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
    "model.layers.1.mlp.down_proj.weight": (TINY_HIDDEN, 2 * TINY_HIDDEN),
    FINAL_NORM: (TINY_HIDDEN,),
    "lm_head.weight": (24, TINY_HIDDEN),
}


def tiny_config(dtype: torch.dtype = torch.float32, tied: bool = False) -> dict:
    """The config.json of a ``TINY_SHAPES`` model: enough for the engine, not for transformers."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": TINY_HIDDEN,
            "num_hidden_layers": 2, "vocab_size": 24, "tie_word_embeddings": tied,
            "torch_dtype": CONFIG_DTYPE_NAMES[dtype]}


def small_llama(hidden: int = 16, layers: int = 2, vocab: int = 64) -> LlamaShape:
    """A complete Llama of ``hidden`` width (heads of 8, no grouped-query attention, FFN 2·hidden)
    that transformers can load and run: for tests that train or evaluate."""
    heads = max(1, hidden // 8)
    return LlamaShape(hidden=hidden, layers=layers, intermediate=2 * hidden, heads=heads, kv_heads=heads,
                      head_dim=hidden // heads, vocab=vocab, tied_embeddings=False)


def save_model(directory: str | Path, tensors: dict[str, torch.Tensor], *, config: dict | None = None,
               shards: list[list[str]] | None = None, extra: dict[str, str] | None = None) -> Path:
    """An HF model directory: one ``model.safetensors``, or ``shards`` (lists of tensor names) in
    the files ``shard_file_names`` names, plus the index; ``config.json`` and ``extra`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    if not shards:
        save_file(tensors, str(directory / SINGLE_FILE_NAME), metadata={"format": "pt"})
    else:
        if sorted(n for shard in shards for n in shard) != sorted(tensors):
            raise ValueError("the shards must name every tensor exactly once")
        weight_map = {}
        for names, file_name in zip(shards, shard_file_names(len(shards))):
            save_file({n: tensors[n] for n in names}, str(directory / file_name), metadata={"format": "pt"})
            weight_map.update({n: file_name for n in names})
        (directory / SHARDED_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
    return directory


@dataclass
class TinyFamily:
    root: Path
    base: Path
    experts: list[Path]
    base_tensors: dict[str, torch.Tensor]
    expert_tensors: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def config(self, method: str = "task_arithmetic", weights: list[float] | None = None,
               parameters: dict | None = None, with_base: bool = True, **top) -> dict:
        """A mergekit config merging this family (expert k weighs 0.5 + 0.25·k unless given)."""
        weights = weights if weights is not None else [0.5 + 0.25 * k for k in range(len(self.experts))]
        models = [{"model": str(e), "parameters": {"weight": w}} for e, w in zip(self.experts, weights)]
        mapping: dict = {"merge_method": method, "models": models}
        if with_base:
            mapping["base_model"] = str(self.base)
        if parameters:
            mapping["parameters"] = parameters
        mapping.update(top)
        return mapping

    def write_config(self, *args, name: str = "merge.yaml", **kwargs) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(self.config(*args, **kwargs), sort_keys=False))
        return path


def base_tensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Norm weights near 1, matrices of unit-variance rows (entries ~ N(0, 1/width))."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) < 2:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        out[name] = t.to(dtype)
    return out


def expert_delta(name: str, shape: tuple[int, ...], change: str, gen: torch.Generator, scale: float,
                 rank: int = 1) -> torch.Tensor | None:
    """An expert's fp32 delta for one tensor, or None where it keeps the base's exact bytes."""
    if change == "dense":
        return scale * torch.randn(shape, generator=gen)
    if change == "lora":
        if name != LORA_TARGET:
            return None
        a, b = torch.randn(shape[0], 1, generator=gen), torch.randn(1, shape[1], generator=gen)
        return scale * (a @ b)
    if name == FINAL_NORM:
        return None
    if change == "low_rank" and len(shape) == 2:
        u, v = torch.randn(shape[0], rank, generator=gen), torch.randn(shape[1], rank, generator=gen)
        return scale * (u @ v.T) / rank ** 0.5
    delta = scale * torch.randn(shape, generator=gen)
    if len(shape) >= 2:
        delta[torch.randperm(shape[0], generator=gen)[: shape[0] // 2]] = 0.0
    return delta


def tiny_family(root: str | Path, *, experts: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0,
                change: str = "rows", shapes: dict[str, tuple[int, ...]] | None = None, scale: float = 0.05,
                rank: int = 1, tied: bool = False, config: dict | None = None,
                shards: list[list[str]] | None = None, expert_shards: list[list[str]] | None = None,
                base_extra: dict[str, str] | None = None) -> TinyFamily:
    """A base and ``experts`` experts under ``root`` (see the module docstring). ``shapes`` defaults
    to ``TINY_SHAPES`` with ``tiny_config``; ``tied`` drops lm_head (embeddings tied); ``base_extra``
    adds files to the base (a tokenizer, say) that the experts lack."""
    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}, not {change!r}")
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(shapes or TINY_SHAPES)
    if tied:
        shapes.pop("lm_head.weight", None)
    config = config if config is not None else tiny_config(dtype, tied)
    base = base_tensors(shapes, dtype, gen)
    work = torch.promote_types(dtype, torch.float32)  # deltas are added in fp32 (fp64 for an fp64 family)
    family = TinyFamily(root, save_model(root / "base", base, config=config, shards=shards, extra=base_extra), [], base)
    for k in range(experts):
        tensors = {}
        for name, b in base.items():
            delta = expert_delta(name, tuple(b.shape), change, gen, scale * (k + 1), rank)
            # Where the delta is zero the expert keeps the base's exact bytes (no rounding trip).
            tensors[name] = b.clone() if delta is None else torch.where(delta == 0, b, (b.to(work) + delta).to(dtype))
        family.experts.append(save_model(root / f"expert_{k}", tensors, config=config, shards=expert_shards))
        family.expert_tensors.append(tensors)
    return family


def small_llama_family(root: str | Path, *, experts: int = 2, hidden: int = 16, layers: int = 2,
                       dtype: torch.dtype = torch.bfloat16, seed: int = 0, delta_rank: int | None = None,
                       scale: float = 0.02) -> TinyFamily:
    """``tiny_family`` over a complete ``small_llama`` (loadable by transformers): "rows" deltas,
    or "low_rank" ones of ``delta_rank``."""
    shape = small_llama(hidden, layers)
    return tiny_family(root, experts=experts, dtype=dtype, seed=seed, scale=scale,
                       change="low_rank" if delta_rank else "rows", rank=delta_rank or 1,
                       shapes=dict(tensor_shapes(shape)), config=llama_config(shape, CONFIG_DTYPE_NAMES[dtype]))
