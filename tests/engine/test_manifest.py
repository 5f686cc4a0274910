"""The manifest written next to every merge, and replay: bit-identical or a non-zero exit."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import xxhash
from conftest import BLOCK, listing, load_model, run_cli

from mergehub import __version__
from mergehub.demo.tiny import save_model
from mergehub.engine import api, manifest
from mergehub.engine.config import parse_config
from mergehub.engine.errors import InvalidCheckpoint, ReplayMismatch
from mergehub.engine.planner import expand_ranges


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _xxh3(path) -> str:
    return xxhash.xxh3_128(path.read_bytes()).hexdigest()


def _merge(family, out, catalog, mapping=None, **kwargs):
    kwargs.setdefault("block_size", BLOCK)
    return api.run_merge(parse_config(mapping or family.config()), out, catalog_dir=catalog,
                         device="cpu", **kwargs)


def test_the_manifest_records_everything_replay_needs(tmp_path, family, catalog):
    result = _merge(family, tmp_path / "out", catalog, budget=0.4, seed=5)
    doc = json.loads((tmp_path / "out" / manifest.FILENAME).read_text())
    assert doc == result.manifest and doc["format"] == manifest.FORMAT
    # inputs with the sha256 of every file
    assert doc["inputs"]["base"]["files"] == {"model.safetensors": _sha(family.base / "model.safetensors")}
    assert [m["files"] for m in doc["inputs"]["models"]] == [
        {"model.safetensors": _sha(e / "model.safetensors")} for e in family.experts]
    # operator, parameters, seed, budget
    assert doc["merge_method"] == "task_arithmetic" and doc["seed"] == 5
    assert doc["config"]["models"][0]["parameters"] == {"weight": 0.5}
    assert doc["budget"] == {"spec": "0.4", "bytes": result.plan.budget_bytes}
    # plan digest and the access set it covers
    assert doc["plan"]["digest"] == result.plan.digest and len(doc["plan"]["digest"]) == 64
    assert expand_ranges(doc["plan"]["access"]) == result.plan.access
    assert doc["plan"]["block_size"] == BLOCK
    # output hashes, metrics and versions
    assert doc["outputs"] == {"files": {"model.safetensors": _xxh3(tmp_path / "out" / "model.safetensors")},
                              "hash": "xxh3_128"}
    for key in ("planned_expert_bytes", "expert_bytes_read", "expert_bytes_requested", "certificate",
                "seconds", "base_bytes_read", "bytes_written"):
        assert key in doc["metrics"]
    assert doc["versions"]["mergehub"] == __version__ and doc["versions"]["torch"] == torch.__version__
    assert {"python", "safetensors", "numpy"} <= set(doc["versions"])


def test_sharded_output_hashes_every_file(tmp_path, family, catalog):
    result = _merge(family, tmp_path / "out", catalog, shard_bytes=400)
    files = result.manifest["outputs"]["files"]
    assert len(files) > 2 and "model.safetensors.index.json" in files
    for name, digest in files.items():
        assert _xxh3(tmp_path / "out" / name) == digest


@pytest.mark.parametrize("kwargs", [dict(budget=0.3), dict(budget=1.0), dict(budget=0.5, shard_bytes=400)])
def test_replay_is_bit_identical(tmp_path, family, catalog, kwargs):
    _merge(family, tmp_path / "out", catalog, **kwargs)
    result = api.replay(tmp_path / "out" / manifest.FILENAME, tmp_path / "again", catalog_dir=catalog)
    assert result.manifest["outputs"] == json.loads((tmp_path / "out" / manifest.FILENAME).read_text())["outputs"]
    for name in result.manifest["outputs"]["files"]:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_manifests_before_0_2_4_hold_sha256_hashes_and_still_replay(tmp_path, family, catalog):
    """Output hashes were sha256 before 0.2.4, with no algorithm named: such a manifest replays,
    hashing with sha256, and a wrong sha256 still fails it."""
    _merge(family, tmp_path / "out", catalog, budget=0.5, shard_bytes=400)
    path = tmp_path / "out" / manifest.FILENAME
    doc = json.loads(path.read_text())
    del doc["outputs"]["hash"]
    doc["outputs"]["files"] = {name: _sha(tmp_path / "out" / name) for name in doc["outputs"]["files"]}
    path.write_text(json.dumps(doc))
    result = api.replay(path, tmp_path / "again", catalog_dir=catalog)
    assert result.manifest["outputs"] == {"files": doc["outputs"]["files"], "hash": "sha256"}
    doc["outputs"]["files"]["model.safetensors.index.json"] = "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(ReplayMismatch, match="index.json"):
        api.replay(path, tmp_path / "third", catalog_dir=catalog)
    assert not (tmp_path / "third").exists()


def test_an_unknown_output_hash_is_refused_before_anything_runs(tmp_path, family, catalog, capsys):
    _merge(family, tmp_path / "out", catalog)
    path = tmp_path / "out" / manifest.FILENAME
    doc = json.loads(path.read_text())
    doc["outputs"]["hash"] = "md5"
    path.write_text(json.dumps(doc))
    rc, out, err = run_cli(capsys, "replay", path, tmp_path / "again", "--catalog", catalog)
    assert rc != 0 and "outputs.hash" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()


def test_replay_of_a_random_operator_from_the_cli(tmp_path, family, catalog, capsys):
    mapping = family.config("dare_ties", parameters={"density": 0.5})
    _merge(family, tmp_path / "out", catalog, mapping, budget=0.6, seed=11)
    rc, out, err = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog)
    assert rc == 0 and "bit-identical" in out and err == ""
    a, b = load_model(tmp_path / "out"), load_model(tmp_path / "again")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_replay_keeps_parameters_written_as_yaml_strings(tmp_path, family, catalog):
    """YAML reads 5e-1 as a string; the replayed config must give the same plan digest."""
    path = tmp_path / "merge.yaml"
    text = family.write_config(parameters={"lambda": 1.0}).read_text().replace("lambda: 1.0", "lambda: 5e-1")
    path.write_text(text)
    api.run_merge(api.load_config(path), tmp_path / "out", catalog_dir=catalog, block_size=BLOCK, budget=0.5)
    api.replay(tmp_path / "out", tmp_path / "again", catalog_dir=catalog)
    assert load_model(tmp_path / "again")


def test_a_config_with_relative_paths_replays(tmp_path, family, catalog, capsys):
    """The YAML names its models relative to itself; the manifest records their directories."""
    import os

    path = tmp_path / "relative.yaml"
    text = family.write_config().read_text()
    for model in (family.base, *family.experts):
        text = text.replace(str(model), os.path.relpath(model, tmp_path))
    assert str(family.base) not in text
    path.write_text(text)
    api.run_merge(api.load_config(path), tmp_path / "out", catalog_dir=catalog, block_size=BLOCK, budget=0.5)
    rc, out, err = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog)
    assert rc == 0 and "bit-identical" in out, err


def test_tampered_output_hash_fails_and_publishes_nothing(tmp_path, family, catalog, capsys):
    _merge(family, tmp_path / "out", catalog, budget=0.5)
    path = tmp_path / "out" / manifest.FILENAME
    doc = json.loads(path.read_text())
    doc["outputs"]["files"]["model.safetensors"] = "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(ReplayMismatch, match="model.safetensors"):
        api.replay(path, tmp_path / "again", catalog_dir=catalog)
    assert not (tmp_path / "again").exists()
    rc, out, err = run_cli(capsys, "replay", path, tmp_path / "again", "--catalog", catalog)
    assert rc != 0 and "differs" in err and len(err.strip().splitlines()) == 1
    assert [p for p in listing(tmp_path) if p.startswith(".again") or p.startswith("again")] == []


def test_changed_inputs_fail_the_replay(tmp_path, family, catalog, capsys):
    _merge(family, tmp_path / "out", catalog, budget=0.5)
    tensors = dict(family.expert_tensors[1])
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    save_model(family.experts[1], tensors)
    rc, out, err = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog)
    assert rc != 0 and "input files differ" in err and "Traceback" not in err
    assert not (tmp_path / "again").exists()


def test_replay_into_an_existing_directory_needs_force(tmp_path, family, catalog, capsys):
    _merge(family, tmp_path / "out", catalog)
    (tmp_path / "again").mkdir()
    rc, _, err = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog)
    assert rc == 2 and "--force" in err
    rc, _, _ = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog, "--force")
    assert rc == 0 and (tmp_path / "again" / "model.safetensors").exists()


@pytest.mark.parametrize("content, match", [(None, "no such manifest"), ("{oops", "not a readable"),
                                            ('{"format": "other"}', "not a MergeHub manifest")])
def test_unreadable_manifests(tmp_path, content, match):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidCheckpoint, match=match):
        manifest.read(path)


def _tamper(doc: dict, case: str) -> None:
    if case == "unknown tensor":
        doc["plan"]["access"][0]["model.nope.weight"] = [[0, 0]]
    elif case == "block out of range":
        doc["plan"]["access"][0]["model.norm.weight"] = [[5, 9]]
    elif case == "missing plan":
        del doc["plan"]
    elif case == "budget not a spec":
        doc["budget"] = "x"
    elif case == "access of the wrong shape":
        doc["plan"]["access"] = {"a": 1}
    elif case == "config not a mapping":
        doc["config"] = [1]
    elif case == "expert count":
        doc["plan"]["access"].append({})
    elif case == "shard size":
        doc["shard_bytes"] = "big"


@pytest.mark.parametrize("case", ["unknown tensor", "block out of range", "missing plan", "budget not a spec",
                                  "access of the wrong shape", "config not a mapping", "expert count",
                                  "shard size"])
def test_a_malformed_manifest_is_a_one_line_error(tmp_path, family, catalog, capsys, case):
    _merge(family, tmp_path / "out", catalog, budget=0.5)
    doc = json.loads((tmp_path / "out" / manifest.FILENAME).read_text())
    _tamper(doc, case)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    rc, out, err = run_cli(capsys, "replay", path, tmp_path / "again", "--catalog", catalog)
    assert rc == 2 and err.startswith("mergehub: error: ") and err.count("\n") == 1, err
    assert "replay needs" in err and "Traceback" not in err
    assert not (tmp_path / "again").exists()


def test_a_merge_recorded_before_its_method_changed_is_refused(tmp_path, family, catalog, capsys):
    """arcee_fusion's KL became exact in 0.2.2 and its sample moved in 0.2.6: an older manifest
    cannot replay bit-identically, which replay says before writing anything; one made since
    replays."""
    mapping = family.config("arcee_fusion")
    mapping["models"] = [{"model": mapping["models"][0]["model"]}]  # one expert, no parameters
    _merge(family, tmp_path / "out", catalog, mapping, seed=3)
    path = tmp_path / "out" / manifest.FILENAME
    doc = json.loads(path.read_text())
    for made_by, refused in [("0.2.5", True), ("0.2.1", True), ("0.1.0", True), ("0.2.6", False), ("0.10.0", False)]:
        doc["versions"]["mergehub"] = made_by
        path.write_text(json.dumps(doc))
        again = tmp_path / f"again-{made_by}"
        rc, out, err = run_cli(capsys, "replay", tmp_path / "out", again, "--catalog", catalog)
        if refused:
            assert rc != 0 and f"MergeHub {made_by}" in err and "since 0.2.6" in err and "run the merge again" in err
            assert len(err.strip().splitlines()) == 1 and not again.exists()
        else:
            assert rc == 0 and "bit-identical" in out, err


def test_a_random_merge_recorded_before_the_new_random_stream_is_refused(tmp_path, family, catalog, capsys):
    mapping = family.config("dare_linear", parameters={"density": 0.5})
    _merge(family, tmp_path / "out", catalog, mapping, seed=3)
    path = tmp_path / "out" / manifest.FILENAME
    doc = json.loads(path.read_text())
    doc["versions"]["mergehub"] = "0.1.0"  # its draws were torch.rand streams per block
    path.write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, "replay", tmp_path / "out", tmp_path / "again", "--catalog", catalog)
    assert rc != 0 and "MergeHub 0.1.0" in err and "run the merge again" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "again").exists()
    # deterministic operators replay across versions
    _merge(family, tmp_path / "ta", catalog, seed=3)
    path = tmp_path / "ta" / manifest.FILENAME
    doc = json.loads(path.read_text())
    doc["versions"]["mergehub"] = "0.1.0"
    path.write_text(json.dumps(doc))
    rc, out, _ = run_cli(capsys, "replay", tmp_path / "ta", tmp_path / "ta-again", "--catalog", catalog)
    assert rc == 0 and "bit-identical" in out
