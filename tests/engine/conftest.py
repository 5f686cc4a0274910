"""Helpers for the engine tests. Their checkpoint families come from ``mergehub.demo.tiny``
(Llama tensor names, a few hundred bytes each; see that module for the ``change`` patterns).

Blocks in these tests are small (``BLOCK`` = 64 bytes = 2 fp32 rows of width 8), so one tensor
has several blocks and budgets cut through tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergehub.demo.tiny import TinyFamily, tiny_family
from mergehub.engine import cli
from mergehub.engine.model_files import INDEX_NAME

BLOCK = 64


@pytest.fixture(autouse=True)
def _isolated_catalog(tmp_path, monkeypatch):
    """Never touch ~/.cache: the default catalog lives in the test's tmp dir; and the block size
    a shell may export for the web app (MERGEHUB_BLOCK_SIZE, the CLI's default too) is not used."""
    monkeypatch.setenv("MERGEHUB_CATALOG", str(tmp_path / "default-catalog"))
    monkeypatch.delenv("MERGEHUB_BLOCK_SIZE", raising=False)


def make_family(root: Path, **options) -> TinyFamily:
    """``mergehub.demo.tiny.tiny_family`` with the base carrying a tokenizer and a generation
    config, as a published base does (outputs copy them)."""
    extra = {"tokenizer.json": '{"model": {"type": "BPE"}}', "generation_config.json": "{}"}
    return tiny_family(root, base_extra=extra, **options)


@pytest.fixture
def family(tmp_path) -> TinyFamily:
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

