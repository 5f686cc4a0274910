"""The catalog: per-block delta statistics computed once per (expert, base) pair, then reused."""

from __future__ import annotations

import hashlib
import math
import os

import pytest
import torch
from conftest import BLOCK, make_family

from mergehub.demo.tiny import save_model
from mergehub.engine import api
from mergehub.engine.blocks import partition
from mergehub.engine.catalog import Catalog, check_compatible
from mergehub.engine.control import Control
from mergehub.engine.errors import Cancelled, MismatchedCheckpoints
from mergehub.engine.layout import read_model_layout


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_block_statistics_match_the_deltas(family, catalog):
    base, expert = read_model_layout(family.base), read_model_layout(family.experts[1])
    (entry,), indexed = Catalog(catalog).ensure([expert], base, BLOCK)
    assert indexed == [0]
    for name, info in base.tensors.items():
        st = entry.tensors[name]
        delta = family.expert_tensors[1][name].double() - family.base_tensors[name].double()
        blocks = partition(info, BLOCK)
        assert len(st.changed) == len(blocks)
        for b, block in enumerate(blocks):
            d = delta[block.row_start:block.row_end] if delta.dim() >= 2 else delta
            assert st.changed[b] == bool((d != 0).any())
            assert st.norm[b] == pytest.approx(float(d.norm()), rel=1e-6, abs=1e-12)
            assert st.max_abs[b] == pytest.approx(float(d.abs().max()), rel=1e-6, abs=1e-12)
            assert st.nonzero[b] == pytest.approx(float((d != 0).double().mean()) if st.changed[b] else 0.0)
    # the fixture leaves about half of the rows of 2-D tensors and the final norm unchanged
    assert not any(entry.tensors["model.norm.weight"].changed)
    assert 0 < sum(sum(s.changed) for s in entry.tensors.values()) < sum(len(s.changed) for s in entry.tensors.values())


def test_file_hashes_are_sha256_of_the_files(family, catalog):
    summary = api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    assert summary.indexed_now
    d = summary.to_dict()
    assert d["file_hashes"] == {"model.safetensors": _sha256(family.experts[0] / "model.safetensors")}
    assert d["base_file_hashes"] == {"model.safetensors": _sha256(family.base / "model.safetensors")}
    assert d["block_size"] == BLOCK and d["nonfinite"] == []
    assert d["tensors"]["model.layers.1.mlp.down_proj.weight"]["layer"] == 1
    assert d["tensors"]["model.norm.weight"]["delta_norm"] == 0.0


def test_sharded_files_are_hashed_too(tmp_path, catalog):
    names = list(make_family(tmp_path / "probe", experts=0).base_tensors)
    fam = make_family(tmp_path / "f", experts=1, shards=[names[:5], names[5:]],
                      expert_shards=[names[:2], names[2:]])
    d = api.index_model(fam.experts[0], fam.base, catalog_dir=catalog, block_size=BLOCK).to_dict()
    assert d["file_hashes"] == {p.name: _sha256(p) for p in fam.experts[0].glob("*.safetensors")}
    assert d["base_file_hashes"] == {p.name: _sha256(p) for p in fam.base.glob("*.safetensors")}


def test_entries_are_reused_until_a_file_changes(family, catalog):
    first = api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    again = api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    assert first.indexed_now and not again.indexed_now
    assert again.entry.tensors == first.entry.tensors
    # another block size is another entry
    assert api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=2 * BLOCK).indexed_now
    # rewriting the expert (new content, new mtime) makes the entry stale
    tensors = dict(family.expert_tensors[0])
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_model(family.experts[0], tensors)
    st = os.stat(family.experts[0] / "model.safetensors")
    os.utime(family.experts[0] / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    assert rebuilt.indexed_now and any(rebuilt.entry.tensors["model.norm.weight"].changed)
    assert api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK,
                           force=True).indexed_now


def test_a_corrupt_catalog_entry_is_rebuilt(family, catalog):
    api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    (entry_file,) = catalog.glob("*.json")
    entry_file.write_text("{truncated")
    assert api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK).indexed_now


def test_nonfinite_values_are_flagged(family, catalog):
    tensors = dict(family.expert_tensors[0])
    bad = tensors["model.layers.0.mlp.up_proj.weight"].clone()
    bad[3, 1] = float("nan")
    bad[5, 2] = float("inf")
    tensors["model.layers.0.mlp.up_proj.weight"] = bad
    save_model(family.experts[0], tensors)
    summary = api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    assert summary.entry.nonfinite == ["model.layers.0.mlp.up_proj.weight"]
    st = summary.entry.tensors["model.layers.0.mlp.up_proj.weight"]
    assert all(math.isfinite(n) for n in st.norm)


def test_mismatched_experts_list_the_differing_tensors(tmp_path):
    fam = make_family(tmp_path, experts=1)
    tensors = dict(fam.expert_tensors[0])
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(4, 8)
    tensors["model.layers.9.extra.weight"] = torch.zeros(2)
    del tensors["lm_head.weight"]
    tensors["model.norm.weight"] = tensors["model.norm.weight"].half()
    save_model(fam.experts[0], tensors)
    with pytest.raises(MismatchedCheckpoints) as info:
        check_compatible(read_model_layout(fam.base), read_model_layout(fam.experts[0]))
    msg = str(info.value)
    assert "4 differing tensors" in msg and "\n" not in msg
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.9.extra.weight",
                 "lm_head.weight", "model.norm.weight"):
        assert name in msg


def test_indexing_reports_progress_and_can_be_cancelled(family, catalog):
    seen = []
    api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK,
                    progress=seen.append)
    assert seen and all(p.stage == "index" for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].done == seen[-1].total
    with pytest.raises(Cancelled):
        Catalog(catalog).ensure([read_model_layout(family.experts[1])], read_model_layout(family.base),
                                BLOCK, Control(cancel=lambda: True))
    assert not Catalog(catalog).lookup(read_model_layout(family.experts[1]), read_model_layout(family.base), BLOCK)
