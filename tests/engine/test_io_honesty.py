"""Honest I/O: with the page cache evicted, the expert bytes actually fetched from storage
(``/proc/thread-self/io`` read_bytes, as the executor measures them) stay within the planned
bytes plus headers.

Storage is read in whole pages, so the guarantee is exact when blocks are whole, aligned pages
(first test, a page-aligned checkpoint). With safetensors' usual unaligned layout each
contiguous run of planned blocks can also touch one partial page at each end (second test).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_family, on_tmpfs, tensor_bytes

from mergehub.engine import api, executor, iostats
from mergehub.engine.blocks import coalesce, partition
from mergehub.engine.config import parse_config
from mergehub.engine.layout import read_model_layout

PAGE = os.sysconf("SC_PAGE_SIZE")
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def _cold_read_is_measured(directory: Path) -> bool:
    """Write a file, evict it, read it back in a fresh thread: does read_bytes move?"""
    probe = directory / ".io-probe"
    probe.write_bytes(os.urandom(16 * PAGE))
    iostats.evict_from_page_cache([probe])
    seen = []

    def read():
        before = iostats.thread_read_bytes()
        with open(probe, "rb") as f:
            f.read()
        seen.append(iostats.thread_read_bytes() - before)

    t = threading.Thread(target=read)
    t.start()
    t.join()
    probe.unlink()
    return seen[0] > 0


@pytest.fixture
def cold_dir(tmp_path):
    """A directory on a real block device whose cold reads the kernel counts (else skip)."""
    if not iostats.io_counters_available():
        pytest.skip("no /proc/thread-self/io: storage reads cannot be measured on this system")
    cleanup = None
    directory = tmp_path
    if on_tmpfs(tmp_path):
        if not REPO_DATA.is_dir() or on_tmpfs(REPO_DATA):
            pytest.skip(f"{tmp_path} is on tmpfs and {REPO_DATA} is not a block-device directory")
        directory = cleanup = Path(tempfile.mkdtemp(prefix=".test-io-", dir=REPO_DATA))
    try:
        if not _cold_read_is_measured(directory):
            pytest.skip(f"read_bytes stays 0 for a cold read in {directory} (tmpfs, a network or "
                        "overlay filesystem, or I/O accounting off): storage reads are not measurable")
        yield directory
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)


def _save_page_aligned(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A valid safetensors file whose data region starts on a page boundary (the JSON header is
    padded with spaces, as the format allows); tensors of whole pages stay aligned."""
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.numel() * 4]}
        offset += t.numel() * 4
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % PAGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            f.write(tensor_bytes(t.float()))


def _aligned_family(root: Path, experts: int = 2) -> tuple[Path, list[Path]]:
    """Rows of exactly one page (PAGE/4 fp32 values); each expert changes a seeded half of the rows."""
    gen = torch.Generator().manual_seed(0)
    width = PAGE // 4
    shapes = {f"model.layers.{i}.mlp.up_proj.weight": (32, width) for i in range(3)}
    base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    _save_page_aligned(root / "base" / "model.safetensors", base)
    dirs = []
    for k in range(experts):
        tensors = {}
        for name, b in base.items():
            rows = torch.rand(b.shape[0], generator=gen) < 0.5
            tensors[name] = b + 0.01 * torch.randn(b.shape, generator=gen) * rows[:, None]
        _save_page_aligned(root / f"expert_{k}" / "model.safetensors", tensors)
        dirs.append(root / f"expert_{k}")
    return root / "base", dirs


def _merge_cold(config, out: Path, catalog: Path, block_size: int, budget, sketch_rank: int | None = None) -> dict:
    """Index (warm), evict every input file, then merge: the merge's metrics."""
    api.plan_merge(config, catalog_dir=catalog, block_size=block_size, index_missing=True)
    paths = [config.base_model.path] + [m.path for m in config.models]
    iostats.evict_from_page_cache([f.path for p in paths for f in read_model_layout(p).files])
    return api.run_merge(config, out, catalog_dir=catalog, block_size=block_size, budget=budget,
                         device="cpu", sketch_rank=sketch_rank).metrics


def _headers(config) -> int:
    return sum(read_model_layout(m.path).header_bytes for m in config.models)


@pytest.mark.parametrize("budget", [0.1, 0.35, 1.0])
def test_page_aligned_blocks_read_exactly_what_was_planned(cold_dir, budget):
    base, experts = _aligned_family(cold_dir / "family")
    config = parse_config({"merge_method": "task_arithmetic", "base_model": str(base),
                           "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in experts]})
    m = _merge_cold(config, cold_dir / "out", cold_dir / "catalog", block_size=PAGE, budget=budget)
    planned = m["planned_expert_bytes"]
    assert 0 < planned < m["full_expert_bytes"]
    blocks = planned - m["planned_sketch_bytes"]  # the rest of the plan is sketches, from the catalog
    assert m["expert_bytes_requested"] == blocks and m["sketch_bytes_requested"] == m["planned_sketch_bytes"]
    assert 0 < m["expert_bytes_read"] <= blocks + _headers(config)
    # a sketch is two ranges (prefixes of Aᵀ and Bᵀ), each at most a page longer at either end
    assert m["sketch_bytes_read"] <= m["sketch_bytes_requested"] + 4 * PAGE * m["sketches_planned"]
    # the base is read once, whole
    assert m["base_bytes_read"] >= m["base_bytes_requested"] - PAGE


@pytest.mark.parametrize("budget", [0.35, 1.0])
def test_streamed_tensors_are_fetched_from_storage_once(cold_dir, monkeypatch, budget):
    """A tensor merged in pieces after two counting passes (executor.STREAMED_TENSOR_BYTES) asks
    for its bytes three times; storage gives them once, and no expert byte beyond the plan."""
    monkeypatch.setattr(executor, "STREAMED_TENSOR_BYTES", 0)  # stream every tensor
    base, experts = _aligned_family(cold_dir / "family")
    config = parse_config({"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                           "models": [{"model": str(e), "parameters": {"weight": 0.5, "density": 0.5}}
                                      for e in experts]})
    m = _merge_cold(config, cold_dir / "out", cold_dir / "catalog", block_size=PAGE, budget=budget, sketch_rank=0)
    planned = m["planned_expert_bytes"]
    assert m["expert_bytes_requested"] == planned > 0
    assert m["reread_bytes_requested"] == 2 * (planned + m["base_bytes_requested"])
    assert 0 < m["expert_bytes_read"] <= planned + _headers(config)
    assert m["base_bytes_read"] <= m["base_bytes_requested"] + read_model_layout(base).header_bytes + PAGE


@pytest.mark.parametrize("budget", [0.05, 0.3, 1.0])
def test_unaligned_blocks_cost_at_most_a_page_at_each_end_of_a_run(cold_dir, budget):
    shapes = {f"model.layers.{i}.self_attn.q_proj.weight": (256, 512) for i in range(4)}
    shapes["model.norm.weight"] = (512,)
    fam = make_family(cold_dir / "family", shapes=shapes, change="rows", experts=2)
    config = parse_config(fam.config())
    block = 16 * PAGE
    # blocks only: at small budgets sketches would take the whole budget here
    m = _merge_cold(config, cold_dir / "out", cold_dir / "catalog", block_size=block, budget=budget, sketch_rank=0)
    planned = m["planned_expert_bytes"]
    assert m["expert_bytes_requested"] == planned and planned > 0
    layout = read_model_layout(fam.base)
    plan = api.plan_merge(config, catalog_dir=cold_dir / "catalog", block_size=block, budget=budget, sketch_rank=0)
    runs = 0
    for per in plan.access:
        spans = [(b.start, b.nbytes) for name, bs in per.items()
                 for b in (partition(layout.tensors[name], block)[i] for i in bs)]
        runs += len(coalesce(spans))
    assert m["expert_bytes_read"] <= planned + _headers(config) + 2 * PAGE * runs
    # and far less than the experts' size whenever the budget is small
    if budget < 1:
        assert m["expert_bytes_read"] <= math.ceil(budget * m["full_expert_bytes"]) + 2 * PAGE * runs


def test_header_reads_leave_no_readahead_behind(cold_dir):
    """Reading a layout after eviction fetches the header pages only (regression: a plain read
    of the header read ahead, and the mark it left made later FADV_RANDOM reads read ahead too)."""
    fam = make_family(cold_dir / "family", experts=1,
                      shapes={"model.layers.0.mlp.up_proj.weight": (1024, 256)})
    path = fam.experts[0] / "model.safetensors"
    iostats.evict_from_page_cache([path])
    seen = []

    def run():
        before = iostats.thread_read_bytes()
        layout = read_model_layout(fam.experts[0])
        header_cost = iostats.thread_read_bytes() - before
        info = layout.tensors["model.layers.0.mlp.up_proj.weight"]
        from mergehub.engine.reader import RangeReader

        with RangeReader(sequential=False) as reader:
            for r in range(0, info.rows, 64):  # one row in 64, forward: the pattern a budget gives
                reader.read_rows(info, r, r + 1)
            seen.append((header_cost, reader.logical_bytes, reader.storage_bytes))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    header_cost, logical, storage = seen[0]
    assert header_cost <= 2 * PAGE
    assert storage <= logical + 2 * PAGE * (1024 // 64)  # no readahead: at most the pages touched
