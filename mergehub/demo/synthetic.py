"""A synthetic Llama-shaped model family: a base, n experts and example merge configs. The
demo (``manage.py demo_setup``) and the benchmark (bench/generate.py, its command line) both
generate families with ``generate_family``.

``--size`` is the weight bytes of ONE model (the base; every expert has the same size). All
models are written in one pass, tensor by tensor and chunk by chunk, so memory stays at a few
chunks whatever the size. Expert values are (base + δ) computed in fp32 and cast to the dtype,
δ being as described in :mod:`mergehub.demo.deltas`. The family is built in a hidden staging directory
and renamed into place when complete.

Layout of OUT_DIR::

    base/  expert_0/ ... expert_{n-1}/   HF model dirs (weights, config, tokenizer, generation config)
    METHOD.yaml                          a mergekit-style config per method, absolute model paths
    family.json                          what was generated and with which arguments
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from mergehub.engine.api import CONFIG_DTYPE_NAMES, ConfigError, parse_config_dtype, parse_size

from .deltas import DenseDelta, LoraDelta, base_chunk, row_chunks
from .shapes import LlamaShape, choose_shape, llama_config, tensor_shapes
from .safetensors_writer import CheckpointWriter
from .tokenizer import tokenizer_files

FAMILY_FILE = "family.json"
GENERATOR_VERSION = 1
DELTA_KINDS = ("dense", "lora")

ProgressFn = Callable[[int, int], None]  # (bytes written, bytes to write)


def generate_family(out_dir: str | os.PathLike, *, size: str | int = "200MB", experts: int = 3,
                    dtype: str = "bfloat16", shard_size: str | int = "2GB", delta: str = "dense",
                    seed: int = 0, tied_embeddings: bool = False, sigma: float = 1e-3,
                    spread: float = 1.0, lora_rank: int = 8,
                    lora_modules: tuple[str, ...] = ("q_proj", "v_proj"),
                    lora_layers: float = 0.5, hidden: int | None = None, layers: int | None = None,
                    vocab: int | None = None, force: bool = False,
                    progress: ProgressFn | None = None) -> dict:
    """Write a family into ``out_dir``; return its paths (root, base, experts, configs, family)."""
    root = Path(out_dir).absolute()
    torch_dtype = _float_dtype(dtype)
    dtype_name = CONFIG_DTYPE_NAMES[torch_dtype]
    model_bytes = parse_size(size, "size")
    shard_bytes = parse_size(shard_size, "shard size")
    _check_args(experts, delta, sigma, spread, lora_rank, lora_layers)
    element_size = torch_dtype.itemsize
    shape = choose_shape(model_bytes // element_size, tied_embeddings=tied_embeddings,
                         hidden=hidden, layers=layers, vocab=vocab)
    _check_destination(root, force, (experts + 1) * shape.params * element_size)

    staging = root.with_name(f".{root.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    names = ["base"] + [f"expert_{k}" for k in range(experts)]
    sources = [None] + [_delta_source(delta, seed, k, sigma, spread, lora_rank, lora_modules,
                                      lora_layers, shape) for k in range(experts)]
    try:
        _write_weights(staging, names, sources, shape, torch_dtype, shard_bytes, seed, progress)
        for name in names:
            _write_extra_files(staging / name, shape, dtype_name)
        paths = {"root": root, "base": root / "base",
                 "experts": [root / n for n in names[1:]], "family": root / FAMILY_FILE}
        paths["configs"] = _write_configs(staging, paths, dtype_name)
        family = {
            "generator": "mergehub.demo.synthetic", "version": GENERATOR_VERSION,
            "arguments": {"size": model_bytes, "experts": experts, "dtype": dtype_name,
                          "shard_size": shard_bytes, "delta": delta, "seed": seed,
                          "tied_embeddings": tied_embeddings, "sigma": sigma, "spread": spread,
                          "lora_rank": lora_rank, "lora_modules": list(lora_modules),
                          "lora_layers": lora_layers},
            "shape": shape.as_dict(),
            "model_bytes": shape.params * element_size,
            "base": str(paths["base"]), "experts": [str(p) for p in paths["experts"]],
            "configs": {k: str(v) for k, v in paths["configs"].items()},
            "lora_layers_per_expert": {n: sorted(s.layers) for n, s in zip(names, sources)
                                       if isinstance(s, LoraDelta)},
        }
        (staging / FAMILY_FILE).write_text(json.dumps(family, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if root.exists():
        shutil.rmtree(root)  # only reached with force on a previous family (checked above)
    os.rename(staging, root)
    return paths


def _float_dtype(name: str) -> torch.dtype:
    """parse_config_dtype knows only float types and names them when ``name`` is unknown."""
    dtype = parse_config_dtype(name)
    if dtype is None:
        raise ConfigError("dtype is missing: use bfloat16, float16 or float32")
    return dtype


def _check_args(experts: int, delta: str, sigma: float, spread: float, lora_rank: int,
                lora_layers: float) -> None:
    if not isinstance(experts, int) or experts < 1:
        raise ConfigError(f"experts must be a positive integer, got {experts!r}")
    if delta not in DELTA_KINDS:
        raise ConfigError(f"delta {delta!r} is unknown: use one of {', '.join(DELTA_KINDS)}")
    if not sigma > 0:
        raise ConfigError(f"sigma must be positive, got {sigma}")
    if not spread >= 0:
        raise ConfigError(f"spread must be zero or positive, got {spread}")
    if lora_rank < 1:
        raise ConfigError(f"LoRA rank must be at least 1, got {lora_rank}")
    if not 0 < lora_layers <= 1:
        raise ConfigError(f"LoRA layer fraction must be in (0, 1], got {lora_layers}")


def _check_destination(root: Path, force: bool, needed: int) -> None:
    if root.exists():
        if not force:
            raise ConfigError(f"{root} already exists: pass --force to replace it or choose another directory")
        if not (root / FAMILY_FILE).is_file():
            raise ConfigError(f"{root} exists and is not a generated family (no {FAMILY_FILE}); "
                              "remove it yourself or choose another directory")
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed * 1.02:
        raise ConfigError(f"the family needs {needed / 1e9:.2f} GB but {parent} has "
                          f"{free / 1e9:.2f} GB free: choose a smaller --size or fewer --experts")


def _delta_source(kind: str, seed: int, expert: int, sigma: float, spread: float, rank: int,
                  modules: tuple[str, ...], layer_fraction: float, shape: LlamaShape):
    if kind == "dense":
        return DenseDelta(seed, expert, sigma, spread)
    return LoraDelta(seed, expert, sigma, rank, tuple(modules), layer_fraction, shape.layers)


def _write_weights(staging: Path, names: list[str], sources: list, shape: LlamaShape,
                   dtype: torch.dtype, shard_bytes: int, seed: int,
                   progress: ProgressFn | None) -> None:
    """One pass over the tensors: each base chunk is drawn once and every expert derived from it."""
    tensors = tensor_shapes(shape)
    writers = []
    for name in names:
        (staging / name).mkdir()
        writers.append(CheckpointWriter(staging / name, tensors, dtype, shard_bytes))
    element_size = writers[0].element_size
    total = shape.params * element_size * len(names)
    done = 0
    for tname, tshape in tensors:
        for index, (r0, r1) in enumerate(row_chunks(tshape)):
            base = base_chunk(seed, tname, tshape, r0, r1, index)
            base_q = base.to(dtype)
            base_back = base_q.float()
            for writer, source in zip(writers, sources):
                delta = None if source is None else source.chunk(tname, tshape, r0, r1, index)
                writer.write(base_q if delta is None else (base_back + delta).to(dtype))
            done += base_q.numel() * element_size * len(names)
            if progress is not None:
                progress(done, total)
    for writer in writers:
        writer.close()


def _write_extra_files(model_dir: Path, shape: LlamaShape, dtype_name: str) -> None:
    """The non-weight files a Hugging Face model directory carries, so copying them is exercised."""
    (model_dir / "config.json").write_text(json.dumps(llama_config(shape, dtype_name), indent=2) + "\n")
    generation = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}
    (model_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    for fname, content in tokenizer_files(shape.vocab).items():
        (model_dir / fname).write_text(content)


def _write_configs(staging: Path, paths: dict, dtype_name: str) -> dict[str, Path]:
    """Example merge configs in mergekit's YAML schema, one per method, pointing at the final
    (absolute) paths. Methods that take exactly one or two models use the first experts."""
    base, experts = str(paths["base"]), [str(p) for p in paths["experts"]]
    weight = round(1.0 / len(experts), 6)

    def config(method: str, per_model: dict, shared: dict | None = None, models: list[str] = experts,
               with_base: bool = True) -> dict:
        out = {"merge_method": method}
        if with_base:
            out["base_model"] = base
        out["models"] = [{"model": e, "parameters": dict(per_model)} if per_model else {"model": e} for e in models]
        if shared:
            out["parameters"] = shared
        out.update(dtype="float32", out_dtype=dtype_name)
        return out

    sparse = {"weight": 1.0, "density": 0.5}
    configs = {
        "task_arithmetic": config("task_arithmetic", {"weight": weight}),
        "ties": config("ties", sparse, {"normalize": True}),
        "dare_ties": config("dare_ties", sparse),
        "dare_linear": config("dare_linear", {"weight": weight, "density": 0.5}),
        "breadcrumbs": config("breadcrumbs", {"weight": weight, "density": 0.5, "gamma": 0.01}),
        "breadcrumbs_ties": config("breadcrumbs_ties", {"weight": 1.0, "density": 0.5, "gamma": 0.01}),
        "della": config("della", {"weight": 1.0, "density": 0.5, "epsilon": 0.15}),
        "della_linear": config("della_linear", {"weight": weight, "density": 0.5, "epsilon": 0.15}),
        "linear": config("linear", {"weight": weight}, with_base=False),
        "slerp": config("slerp", {}, {"t": 0.5}, models=experts[:1]),
        "nuslerp": config("nuslerp", {"weight": 0.5}, models=experts[:2]),
        "multislerp": config("multislerp", {"weight": weight}),
        "karcher": config("karcher", {}, models=[base] + experts, with_base=False),
        "model_stock": config("model_stock", {}),
        "sce": config("sce", {}, {"select_topk": 0.1}),
        "ram": config("ram", {}),
        "ramplus_tl": config("ramplus_tl", {}),
        "nearswap": config("nearswap", {}, {"t": 0.001}, models=experts[:1]),
        "arcee_fusion": config("arcee_fusion", {}, models=experts[:1]),
        "passthrough": config("passthrough", {}, models=experts[:1], with_base=False),
    }
    if len(experts) < 2:
        for method in ("nuslerp", "model_stock"):  # they need two models
            del configs[method]
    out = {}
    for method, mapping in configs.items():
        (staging / f"{method}.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
        out[method] = paths["root"] / f"{method}.yaml"
    return out
