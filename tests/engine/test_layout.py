"""Safetensors header parsing: where every tensor lives, and strict validation of bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_family, write_raw_safetensors

from mergehub.demo.tiny import TINY_SHAPES, save_model
from mergehub.engine.blocks import block_count, coalesce, partition
from mergehub.engine.errors import ConfigError, InvalidCheckpoint
from mergehub.engine.layout import read_file_header, read_model_layout
from mergehub.engine.model_files import INDEX_NAME
from mergehub.engine.units import parse_size

F32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def test_offsets_point_at_the_tensor_bytes(family):
    layout = read_model_layout(family.base)
    assert list(layout.tensors) and set(layout.tensors) == set(TINY_SHAPES)
    data = (family.base / "model.safetensors").read_bytes()
    for name, info in layout.tensors.items():
        assert info.shape == TINY_SHAPES[name] and info.dtype == "F32"
        expected = family.base_tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        assert data[info.start:info.start + info.nbytes] == expected
        assert info.rows * info.row_bytes == info.nbytes
    assert layout.weight_bytes == sum(4 * math.prod(s) for s in TINY_SHAPES.values())
    assert {p.name for p in layout.extra_files} == {"config.json", "tokenizer.json",
                                                    "generation_config.json"}


def test_sharded_model_reads_every_shard(tmp_path):
    names = list(TINY_SHAPES)
    fam = make_family(tmp_path, experts=1, shards=[names[:3], names[3:6], names[6:]])
    layout = read_model_layout(fam.base)
    assert len(layout.files) == 3 and set(layout.tensors) == set(TINY_SHAPES)
    assert INDEX_NAME not in {p.name for p in layout.extra_files}
    assert {t.file.name for t in layout.tensors.values()} == {f.path.name for f in layout.files}


def test_index_that_disagrees_with_the_shards_is_refused(tmp_path):
    names = list(TINY_SHAPES)
    fam = make_family(tmp_path, experts=0, shards=[names[:4], names[4:]])
    index = fam.base / INDEX_NAME
    doc = json.loads(index.read_text())
    doc["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(InvalidCheckpoint, match=names[0].replace(".", r"\.")):
        read_model_layout(fam.base)


def test_shard_names_cannot_escape_the_model_directory(tmp_path):
    fam = make_family(tmp_path, experts=0, shards=[list(TINY_SHAPES)])
    (fam.base / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(InvalidCheckpoint, match="plain file name"):
        read_model_layout(fam.base)


def test_several_shards_without_an_index_are_refused(tmp_path):
    d = save_model(tmp_path / "m", {"a": torch.zeros(2)})
    (d / "model.safetensors").rename(d / "a.safetensors")
    save_model(tmp_path / "other", {"b": torch.zeros(2)})
    (tmp_path / "other" / "model.safetensors").rename(d / "b.safetensors")
    with pytest.raises(InvalidCheckpoint, match="index"):
        read_model_layout(d)


@pytest.mark.parametrize("header, data, declared, match", [
    ({"a": F32}, b"\0" * 8, None, "past the end"),                       # truncated data
    ({"a": F32}, b"\0" * 16, 10_000, "runs past the end"),               # header length beyond EOF
    (b"{not json", b"", None, "not valid JSON"),
    (b"[1, 2]", b"", None, "JSON object"),
    ({"a": F32, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, None,
     "overlaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, b"\0" * 20, None, "unused bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, None, "trailing"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "invalid data_offsets"),
    ({"a": {"dtype": "F8_E9M9", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, None, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "needs dtype, shape and data_offsets"),
    ({"__metadata__": ["x"], "a": F32}, b"\0" * 16, None, "__metadata__"),
])
def test_bad_headers_are_clear_one_line_errors(tmp_path, header, data, declared, match):
    path = write_raw_safetensors(tmp_path / "m" / "model.safetensors", header, data, declared)
    with pytest.raises(InvalidCheckpoint, match=match) as info:
        read_model_layout(path.parent)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_file_shorter_than_the_length_prefix(tmp_path):
    path = tmp_path / "m" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"\x05\x00")
    with pytest.raises(InvalidCheckpoint, match="truncated"):
        read_model_layout(path.parent)


def test_huge_header_length_is_refused_before_reading(tmp_path):
    path = write_raw_safetensors(tmp_path / "m.safetensors", {"a": F32}, b"\0" * 16, declared_len=1 << 40)
    with pytest.raises(InvalidCheckpoint, match="limit"):
        read_file_header(path)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_files_are_refused_with_a_conversion_hint(tmp_path, suffix):
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(b"not even read")
    with pytest.raises(InvalidCheckpoint, match="convert") as info:
        read_model_layout(path)
    assert "safe_serialization" in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidCheckpoint, match=f"only pickle weights.*{suffix}"):
        read_model_layout(tmp_path)


def test_missing_and_empty_models(tmp_path):
    with pytest.raises(InvalidCheckpoint, match="no such file"):
        read_model_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidCheckpoint, match="no safetensors weights"):
        read_model_layout(tmp_path / "empty")
    save_model(tmp_path / "none", {})
    with pytest.raises(InvalidCheckpoint, match="holds no tensors"):
        read_model_layout(tmp_path / "none")


def test_blocks_tile_each_tensor(family):
    layout = read_model_layout(family.base)
    for info in layout.tensors.values():
        for size in (1, 64, 100, 1 << 20):
            blocks = partition(info, size)
            assert len(blocks) == block_count(info, size)
            assert blocks[0].start == info.start and sum(b.nbytes for b in blocks) == info.nbytes
            for a, b in zip(blocks, blocks[1:]):
                assert a.start + a.nbytes == b.start and a.row_end == b.row_start
            assert all(b.nbytes <= max(size, info.row_bytes) for b in blocks)


def test_coalesce_and_parse_size():
    assert coalesce([(10, 5), (0, 10), (20, 1), (15, 2)]) == [(0, 17), (20, 1)]
    assert parse_size("2GiB") == 2 << 30 and parse_size("512MB") == 512_000_000 and parse_size(64) == 64
    for bad in ("0", "-1MB", "lots", "1 parsec"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_tied_embeddings_layout(tmp_path):
    fam = make_family(tmp_path, experts=1, tied=True)
    assert "lm_head.weight" not in read_model_layout(fam.base).tensors


def test_paths_are_resolved(tmp_path, monkeypatch, family):
    monkeypatch.chdir(family.root)
    layout = read_model_layout(Path("base"))
    assert layout.root == family.base.resolve()
