"""Bad inputs: through the CLI each is exit status 2, one line on stderr, no traceback, and
nothing written (no output directory, no staging directory, no catalog entry)."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch
import yaml
from conftest import BLOCK, listing, make_family, run_cli, snapshot

from mergehub.demo.tiny import save_model
from mergehub.engine import api, writer
from mergehub.engine.config import parse_config
from mergehub.engine.errors import DiskFull


@pytest.fixture
def outputs(tmp_path):
    """An empty directory the merges write into: it must stay empty on every refusal."""
    path = tmp_path / "outputs"
    path.mkdir()
    return path


def _refused(capsys, outputs, catalog, *args, match: str | tuple = ()) -> str:
    """Run ``mergehub ARGS``; check the refusal contract and return the error line."""
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2, (rc, out, err)
    assert err.startswith("mergehub: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    for needle in (match,) if isinstance(match, str) else match:
        assert needle in err, err
    assert listing(outputs) == [], "something was written"
    assert not catalog.exists() or not any(catalog.iterdir()), "a catalog entry was written"
    return err


def _merge_args(config, outputs, catalog, *extra):
    return ("merge", config, outputs / "merged", "--catalog", catalog, "--block-size", BLOCK, *extra)


def _rewrite_header(path, change):
    """Apply ``change`` to the parsed JSON header and write the file back with the same data."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _first(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _header_past_eof(path):
    raw = path.read_bytes()
    path.write_bytes((len(raw) + 100).to_bytes(8, "little") + raw[8:])


def _header_not_json(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    path.write_bytes(raw[:8] + b"\xff" + b"x" * (n - 1) + raw[8 + n:])


def _overlap(header):
    a, b = _first(header)[:2]
    start, end = header[b]["data_offsets"]
    header[b]["data_offsets"] = [start - 4, end - 4]


def _out_of_range(header):
    last = _first(header)[-1]
    start, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start + 64, end + 64]


def _unknown_dtype(header):
    header[_first(header)[0]]["dtype"] = "F31"


def _wrong_shape(header):
    name = _first(header)[0]
    header[name]["shape"] = [header[name]["shape"][0], header[name]["shape"][-1] + 1]


CORRUPTIONS = {
    "truncated": (_truncate, "truncated"),
    "header length beyond EOF": (_header_past_eof, "runs past the end"),
    "header not JSON": (_header_not_json, "not valid JSON"),
    "overlapping offsets": (lambda p: _rewrite_header(p, _overlap), "overlaps"),
    "out-of-range offsets": (lambda p: _rewrite_header(p, _out_of_range), "past the end of the file"),
    "unknown dtype": (lambda p: _rewrite_header(p, _unknown_dtype), "unknown dtype 'F31'"),
    "shape x dtype != bytes": (lambda p: _rewrite_header(p, _wrong_shape), "the file is corrupt"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_safetensors_are_refused(case, family, outputs, catalog, capsys):
    corrupt, message = CORRUPTIONS[case]
    bad = family.experts[1] / "model.safetensors"
    corrupt(bad)
    config = family.write_config()
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog), match=(str(bad), message))
    _refused(capsys, outputs, catalog, "plan", config, "--catalog", catalog, match=message)
    _refused(capsys, outputs, catalog, "index", family.experts[1], "--base", family.base, "--catalog", catalog,
             match=message)


def test_a_corrupt_base_is_refused(family, outputs, catalog, capsys):
    _truncate(family.base / "model.safetensors")
    _refused(capsys, outputs, catalog, *_merge_args(family.write_config(), outputs, catalog),
             match=(str(family.base), "truncated"))


def test_experts_that_do_not_match_the_base_list_the_tensors(family, outputs, catalog, capsys):
    tensors = dict(family.expert_tensors[0])
    tensors["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(8, 4)
    tensors["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(4, 8)
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_model(family.experts[0], tensors)
    err = _refused(capsys, outputs, catalog, *_merge_args(family.write_config(), outputs, catalog),
                   match=("does not match base", "3 differing tensors"))
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.0.mlp.up_proj.weight"):
        assert name in err


class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path, family, outputs, catalog, capsys, suffix):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"model.norm.weight": _Payload(marker)})
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / f"pytorch_model{suffix}").write_bytes(payload)
    (evil / "config.json").write_text("{}")
    mapping = family.config()
    mapping["models"][1]["model"] = str(evil)
    config = tmp_path / "evil.yaml"
    config.write_text(yaml.safe_dump(mapping))
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog),
             match=("only pickle weights", "convert", "safetensors"))
    # the file itself named as the model
    mapping["models"][1]["model"] = str(evil / f"pytorch_model{suffix}")
    config.write_text(yaml.safe_dump(mapping))
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog), match=("convert", "safetensors"))
    _refused(capsys, outputs, catalog, "index", evil, "--base", family.base, "--catalog", catalog, match="convert")
    assert not marker.exists()
    # the payload is live: unpickling it would have run code
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()


def test_a_pickle_next_to_safetensors_is_neither_loaded_nor_copied(tmp_path, family, outputs, catalog, capsys):
    marker = tmp_path / "PWNED"
    (family.base / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    rc, _, err = run_cli(capsys, *_merge_args(family.write_config(), outputs, catalog))
    assert rc == 0 and err == "" and not marker.exists()
    assert not (outputs / "merged" / "pytorch_model.bin").exists()


@pytest.mark.parametrize("budget", ["0", "-0.5", "abc", "1.5", "nan", "0MB", "inf"])
def test_bad_budgets_are_refused(budget, family, outputs, catalog, capsys):
    _refused(capsys, outputs, catalog, *_merge_args(family.write_config(), outputs, catalog, f"--budget={budget}"),
             match="budget")
    _refused(capsys, outputs, catalog, "plan", family.write_config(), f"--budget={budget}", "--catalog", catalog,
             match="budget")
    _refused(capsys, outputs, catalog, "sweep", family.write_config(), f"--budgets=1,{budget}", "--catalog",
             catalog, match="budget")


def test_partial_budget_without_a_base_is_refused(family, outputs, catalog, capsys):
    config = family.write_config("linear", with_base=False)
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog, "--budget", "0.5"),
             match="only budget 1.0")


@pytest.mark.parametrize("change, message", [
    (dict(merge_method="frobnicate"), "unknown merge_method 'frobnicate'"),
    (dict(parameters={"lambada": 1.0}), "unknown parameter 'lambada'"),
    (dict(slices=[]), "slices are not supported"),
    (dict(colour="blue"), "unknown key 'colour'"),
    (dict(dtype="float8"), "unknown dtype"),
])
def test_bad_configs_are_refused(family, outputs, catalog, capsys, change, message):
    mapping = {**family.config(), **change}
    config = family.root / "bad.yaml"
    config.write_text(yaml.safe_dump(mapping))
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog), match=message)


def test_unknown_per_model_parameter(family, outputs, catalog, capsys):
    mapping = family.config()
    mapping["models"][0]["parameters"]["densty"] = 0.5
    config = family.root / "bad.yaml"
    config.write_text(yaml.safe_dump(mapping))
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog), match="unknown parameter 'densty'")


def test_missing_model_path_and_config(tmp_path, family, outputs, catalog, capsys):
    mapping = family.config()
    mapping["models"][1]["model"] = str(tmp_path / "no-such-model")
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump(mapping))
    _refused(capsys, outputs, catalog, *_merge_args(config, outputs, catalog), match=("no-such-model", "not found"))
    _refused(capsys, outputs, catalog, *_merge_args(tmp_path / "nope.yaml", outputs, catalog),
             match="config file")
    _refused(capsys, outputs, catalog, "index", tmp_path / "no-such-model", "--base", family.base,
             "--catalog", catalog, match="no such file")
    (tmp_path / "broken.yaml").write_text("models: [\n")
    _refused(capsys, outputs, catalog, *_merge_args(tmp_path / "broken.yaml", outputs, catalog),
             match="invalid YAML")


def test_cuda_without_a_gpu_is_refused(family, outputs, catalog, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    _refused(capsys, outputs, catalog, *_merge_args(family.write_config(), outputs, catalog, "--device", "cuda"),
             match="no CUDA device")


def test_bad_block_size(family, outputs, catalog, capsys):
    _refused(capsys, outputs, catalog, "merge", family.write_config(), outputs / "merged", "--catalog", catalog,
             "--block-size", "0", match="block-size")


def test_nonfinite_values_are_flagged_and_warned_about(family, outputs, catalog, capsys):
    tensors = dict(family.expert_tensors[1])
    bad = tensors["model.layers.1.mlp.down_proj.weight"].clone()
    bad[2, 3] = float("nan")
    tensors["model.layers.1.mlp.down_proj.weight"] = bad
    save_model(family.experts[1], tensors)
    rc, out, err = run_cli(capsys, "index", family.experts[1], "--base", family.base, "--catalog", catalog,
                           "--block-size", BLOCK)
    assert rc == 0 and err == "warning: NaN or Inf in model.layers.1.mlp.down_proj.weight\n"
    rc, out, err = run_cli(capsys, "index", family.experts[1], "--base", family.base, "--catalog", catalog,
                           "--block-size", BLOCK, "--json")
    assert json.loads(out)["nonfinite"] == ["model.layers.1.mlp.down_proj.weight"]
    rc, out, err = run_cli(capsys, *_merge_args(family.write_config(), outputs, catalog))
    assert rc == 0 and err.startswith("warning: ") and "NaN or Inf" in err
    assert "model.layers.1.mlp.down_proj.weight" in err and err.count("\n") == 1


def test_existing_output_is_refused_and_left_untouched(family, outputs, catalog, capsys):
    target = outputs / "merged"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"\x00precious weights")
    (target / "notes.txt").write_text("do not lose me")
    before = snapshot(target)
    stat_before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    rc, out, err = run_cli(capsys, *_merge_args(family.write_config(), outputs, catalog))
    assert rc == 2 and "already exists" in err and "--force" in err and err.count("\n") == 1
    assert snapshot(target) == before
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stat_before
    assert listing(outputs) == ["merged", "merged/model.safetensors", "merged/notes.txt"]
    assert not catalog.exists()
    rc, _, _ = run_cli(capsys, *_merge_args(family.write_config(), outputs, catalog, "--force"))
    assert rc == 0 and not (target / "notes.txt").exists() and (target / "mergehub_manifest.json").exists()
    assert [p for p in listing(outputs) if not p.startswith("merged/")] == ["merged"]


class _FullDisk:
    """Stands in for the writer's ``os`` module: every call passes through, except that
    writing fails with ENOSPC once ``room`` bytes have been written."""

    def __init__(self, room: int):
        self.room = room

    def write(self, fd, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), self.room)
        self.room -= n
        return os.write(fd, data[:n])

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.mark.parametrize("room", [0, 100, 1000])
def test_full_disk_publishes_nothing(family, outputs, catalog, monkeypatch, room):
    monkeypatch.setattr(writer, "os", _FullDisk(room))
    with pytest.raises(DiskFull, match="nothing was published"):
        api.run_merge(parse_config(family.config()), outputs / "merged", catalog_dir=catalog, block_size=BLOCK)
    assert listing(outputs) == []


def test_full_disk_through_the_cli(family, outputs, catalog, monkeypatch, capsys):
    api.index_model(family.experts[0], family.base, catalog_dir=catalog, block_size=BLOCK)
    monkeypatch.setattr(writer, "os", _FullDisk(200))
    rc, out, err = run_cli(capsys, *_merge_args(family.write_config(), outputs, catalog))
    assert rc == 2 and "no space left" in err and err.count("\n") == 1 and "Traceback" not in err
    assert listing(outputs) == []


def test_the_full_disk_stand_in_really_writes(tmp_path, family, catalog, monkeypatch):
    """Sanity check of _FullDisk: with enough room the merge succeeds through it."""
    stand_in = _FullDisk(1 << 20)
    monkeypatch.setattr(writer, "os", stand_in)
    api.run_merge(parse_config(family.config()), tmp_path / "ok", catalog_dir=catalog, block_size=BLOCK)
    assert stand_in.room < 1 << 20 and isinstance(writer.os, _FullDisk)


def test_an_expert_truncated_after_indexing(tmp_path, catalog, outputs, capsys):
    """The catalog goes stale when the file changes, and the new header is validated again."""
    fam = make_family(tmp_path / "f")
    for e in fam.experts:
        api.index_model(e, fam.base, catalog_dir=catalog, block_size=BLOCK)
    entries = sorted(catalog.iterdir())
    _truncate(fam.experts[0] / "model.safetensors")
    rc, out, err = run_cli(capsys, *_merge_args(fam.write_config(), outputs, catalog))
    assert rc == 2 and "truncated" in err and listing(outputs) == []
    assert sorted(catalog.iterdir()) == entries


def test_a_failed_merge_removes_the_parent_directories_it_created(family, outputs, catalog, monkeypatch):
    monkeypatch.setattr(writer, "os", _FullDisk(100))
    with pytest.raises(DiskFull):
        api.run_merge(parse_config(family.config()), outputs / "a" / "b" / "merged", catalog_dir=catalog,
                      block_size=BLOCK)
    assert listing(outputs) == []
    monkeypatch.undo()
    (outputs / "a").mkdir()
    api.run_merge(parse_config(family.config()), outputs / "a" / "b" / "merged", catalog_dir=catalog,
                  block_size=BLOCK)
    assert (outputs / "a" / "b" / "merged" / "model.safetensors").exists()
