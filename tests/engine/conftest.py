"""Tiny checkpoint families for the engine tests, written with safetensors' own writer.

``make_family(root)`` writes ``root/base`` and ``root/expert_<k>``: Llama tensor names, a few
hundred bytes each. ``change`` picks which values of an expert differ from the base:

* ``"rows"``  — about half of the rows of every 2-D tensor (the rest are the base's exact bytes);
* ``"dense"`` — every value of every tensor;
* ``"lora"``  — a rank-1 delta on the q_proj of layer 0 only; every other tensor is an exact copy.

Blocks in these tests are small (``BLOCK`` = 64 bytes = 2 fp32 rows of width 8), so one tensor
has several blocks and budgets cut through tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergehub.engine import cli
from mergehub.engine.model_files import INDEX_NAME

BLOCK = 64
HIDDEN = 8

# name -> shape; embed/lm_head untied, two layers
SHAPES: dict[str, tuple[int, ...]] = {
    "model.embed_tokens.weight": (24, HIDDEN),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (2 * HIDDEN, HIDDEN),
    "model.layers.1.input_layernorm.weight": (HIDDEN,),
    "model.layers.1.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.1.mlp.down_proj.weight": (HIDDEN, 2 * HIDDEN),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (24, HIDDEN),
}


@pytest.fixture(autouse=True)
def _isolated_catalog(tmp_path, monkeypatch):
    """Never touch ~/.cache: the default catalog lives in the test's tmp dir; and the block size
    a shell may export for the web app (MERGEHUB_BLOCK_SIZE, the CLI's default too) is not used."""
    monkeypatch.setenv("MERGEHUB_CATALOG", str(tmp_path / "default-catalog"))
    monkeypatch.delenv("MERGEHUB_BLOCK_SIZE", raising=False)


def model_config(dtype: torch.dtype = torch.float32, tied: bool = False) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "num_hidden_layers": 2, "vocab_size": 24, "tie_word_embeddings": tied,
            "torch_dtype": str(dtype).removeprefix("torch.")}


def save_model(directory: Path, tensors: dict[str, torch.Tensor], *, config: dict | None = None,
               shards: list[list[str]] | None = None, extra: dict[str, str] | None = None) -> Path:
    """An HF model directory: one ``model.safetensors``, or ``shards`` (lists of tensor names)
    as ``model-0000i-of-0000n.safetensors`` plus the index; config.json and ``extra`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if not shards:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        assert sorted(n for s in shards for n in s) == sorted(tensors), "shards must cover every tensor"
        weight_map = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, str(directory / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in names})
        (directory / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
    return directory


@dataclass
class Family:
    root: Path
    base: Path
    experts: list[Path]
    base_tensors: dict[str, torch.Tensor]
    expert_tensors: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def config(self, method: str = "task_arithmetic", weights: list[float] | None = None,
               parameters: dict | None = None, with_base: bool = True, **top) -> dict:
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


def _expert_delta(name: str, shape: tuple[int, ...], change: str, gen: torch.Generator,
                  scale: float) -> torch.Tensor | None:
    if change == "dense":
        return scale * torch.randn(shape, generator=gen)
    if change == "lora":
        if name != "model.layers.0.self_attn.q_proj.weight":
            return None
        a, b = torch.randn(shape[0], 1, generator=gen), torch.randn(1, shape[1], generator=gen)
        return scale * (a @ b)
    # "rows": half of the rows of 2-D tensors change; 1-D tensors change except the final norm
    if name == "model.norm.weight":
        return None
    delta = scale * torch.randn(shape, generator=gen)
    if len(shape) >= 2:
        delta[torch.randperm(shape[0], generator=gen)[: shape[0] // 2]] = 0.0
    return delta


def make_family(root: Path, *, experts: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0,
                change: str = "rows", shapes: dict[str, tuple[int, ...]] | None = None,
                scale: float = 0.05, tied: bool = False, shards: list[list[str]] | None = None,
                expert_shards: list[list[str]] | None = None) -> Family:
    """A base and ``experts`` experts (see the module docstring); the same arguments give the
    same bytes. ``tied`` drops lm_head (embeddings tied)."""
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(shapes or SHAPES)
    if tied:
        shapes.pop("lm_head.weight", None)
    base = {}
    for name, shape in shapes.items():
        t = 1.0 + 0.1 * torch.randn(shape, generator=gen) if len(shape) < 2 else \
            torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        base[name] = t.to(dtype)
    cfg = model_config(dtype, tied)
    extra = {"tokenizer.json": '{"model": {"type": "BPE"}}', "generation_config.json": "{}"}
    base_dir = save_model(root / "base", base, config=cfg, shards=shards, extra=extra)
    fam = Family(root, base_dir, [], base)
    for k in range(experts):
        tensors = {}
        for name, b in base.items():
            delta = _expert_delta(name, b.shape, change, gen, scale * (k + 1))
            if delta is None:
                tensors[name] = b.clone()
            else:
                x = (b.float() + delta).to(dtype)
                tensors[name] = torch.where(delta == 0, b, x)
        fam.experts.append(save_model(root / f"expert_{k}", tensors, config=cfg,
                                      shards=expert_shards))
        fam.expert_tensors.append(tensors)
    return fam


@pytest.fixture
def family(tmp_path) -> Family:
    return make_family(tmp_path / "family")


@pytest.fixture
def catalog(tmp_path) -> Path:
    return tmp_path / "catalog"


def load_model(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory (single file or sharded with an index)."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.exists():
        out = {}
        for fname in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(str(directory / fname)))
        return out
    return load_file(str(directory / "model.safetensors"))


def snapshot(directory: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``directory``: 'untouched byte for byte'."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def listing(directory: Path) -> list[str]:
    """Every entry under ``directory``, hidden ones (staging dirs) included."""
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*"))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``mergehub ARGS`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def file_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert tensor_bytes(a[name]) == tensor_bytes(b[name]), f"{name} differs"


def write_raw_safetensors(path: Path, header: dict | bytes, data: bytes,
                          declared_len: int | None = None) -> Path:
    """A hand-made safetensors file: u64 header length (or ``declared_len``), header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if declared_len is None else declared_len
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(n.to_bytes(8, "little") + raw + data)
    return Path(path)


def on_tmpfs(path: Path) -> bool:
    """True when ``path`` lives on a RAM filesystem (no block device behind it)."""
    path = Path(path).resolve()
    best, fstype = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount, kind = parts[1], parts[2]
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, kind
    return fstype in ("tmpfs", "ramfs")

