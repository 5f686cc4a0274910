"""prefetch.py: the page-cache warm-up `mergehub merge` runs while torch imports. It reads only
files a merge reads whole, counts what it fetched, and a merge with it gives the same output
and the same byte counts as one without."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import assert_bit_identical, load_model, make_family, on_tmpfs

from mergehub.engine import api, prefetch
from mergehub.engine.iostats import evict_from_page_cache, io_counters_available
from mergehub.engine.operators.registry import OPERATORS, get_operator
from mergehub.engine.pagecache import fully_cached


BIG_SHAPES = {"model.embed_tokens.weight": (512, 512), "model.layers.0.mlp.up_proj.weight": (512, 512),
              "model.norm.weight": (512,)}


def _config(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_the_base_ignoring_methods_match_the_operators():
    get_operator("linear")  # loads every operator
    ignored = {name for name, op in OPERATORS.items() if op.base == "ignored"}
    assert prefetch.BASE_IGNORED == ignored


def test_files_read_whole(tmp_path):
    fam = make_family(tmp_path, experts=2)
    base_files = sorted((fam.base).glob("*.safetensors"))
    # relative paths resolve against the config's directory, as config.py does
    rel = {"merge_method": "task_arithmetic", "base_model": os.path.relpath(fam.base, tmp_path),
           "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in fam.experts]}
    assert prefetch.files_read_whole(_config(tmp_path / "ta.yaml", rel)) == base_files
    linear = {"merge_method": "linear", "base_model": str(fam.base),
              "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in fam.experts]}
    cfg = _config(tmp_path / "linear.yaml", linear)
    assert prefetch.files_read_whole(cfg) == [f for e in fam.experts for f in sorted(e.glob("*.safetensors"))]
    assert prefetch.files_read_whole(cfg, "0.5") == []  # an invalid budget: the merge will refuse it
    no_base = dict(rel, merge_method="nuslerp", base_model=None)
    assert prefetch.files_read_whole(_config(tmp_path / "nb.yaml", no_base)) == []


@pytest.mark.parametrize("text", ["merge_method: [", "- a list", "merge_method: ties\nbase_model: /no/such/dir\n"])
def test_an_odd_config_prefetches_nothing(tmp_path, text):
    (tmp_path / "c.yaml").write_text(text)
    assert prefetch.files_read_whole(tmp_path / "c.yaml") == []
    assert prefetch.start_for_config(tmp_path / "c.yaml") is None


def test_prefetch_caches_the_files_and_counts_their_bytes(tmp_path):
    fam = make_family(tmp_path, experts=1)
    files = sorted(fam.base.glob("*.safetensors"))
    evict_from_page_cache(files)
    if on_tmpfs(files[0]):
        pytest.skip("tmpfs pages cannot be evicted")
    got = prefetch.Prefetch(files, limit=1 << 30).start().wait()
    for f in files:
        with open(f, "rb") as fh:
            assert fully_cached(fh.fileno(), 0, os.path.getsize(f))
        if io_counters_available():
            assert 0 < got[f] <= -(-os.path.getsize(f) // 4096) * 4096


def test_prefetch_stops_at_its_limit(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(os.urandom(3 * prefetch.CHUNK))
    evict_from_page_cache([path])
    assert prefetch._read_ahead(path, prefetch.CHUNK + 4096, bytearray(prefetch.CHUNK),
                                prefetch.threading.Event()) == prefetch.CHUNK + 4096


@pytest.mark.parametrize("method", ["task_arithmetic", "passthrough"])
def test_a_merge_with_prefetch_equals_one_without(tmp_path, method):
    # tensors of 1 MiB: most of the data lies beyond the header pages (which reading the
    # layout caches anyway), so a cold merge does fetch its base from storage
    fam = make_family(tmp_path, experts=1, change="dense", shapes=BIG_SHAPES)
    doc = {"merge_method": method, "models": [{"model": str(fam.experts[0])}]}
    if method == "task_arithmetic":
        doc["base_model"] = str(fam.base)
        doc["models"][0]["parameters"] = {"weight": 0.7}
    cfg = _config(tmp_path / "c.yaml", doc)
    config = api.load_config(cfg)
    read_whole = list((fam.base if method == "task_arithmetic" else fam.experts[0]).glob("*.safetensors"))
    key = "base_bytes_read" if method == "task_arithmetic" else "expert_bytes_read"
    api.run_merge(config, tmp_path / "index", catalog_dir=tmp_path / "cat")  # indexes the expert
    all_files = [*fam.base.glob("*.safetensors"), *fam.experts[0].glob("*.safetensors")]
    evict_from_page_cache(all_files)
    plain = api.run_merge(config, tmp_path / "plain", catalog_dir=tmp_path / "cat")
    evict_from_page_cache(all_files)
    warm = prefetch.start_for_config(cfg)
    assert warm is not None
    warm.wait()  # all of it warmed before the merge: the merge itself fetches nothing more
    warmed = api.run_merge(config, tmp_path / "warm", catalog_dir=tmp_path / "cat", prefetch=warm)
    assert_bit_identical(load_model(tmp_path / "plain"), load_model(tmp_path / "warm"))
    if io_counters_available() and not on_tmpfs(tmp_path):
        fetched = sum(warm.storage_bytes.values())
        pages = sum(-(-os.path.getsize(f) // 4096) * 4096 for f in read_whole)
        # the warm-up's bytes are counted as the merge's reads: as many as a cold merge reads
        # (plus the header pages it skips), never a byte fetched twice
        assert fetched > 0
        assert plain.metrics[key] <= warmed.metrics[key] <= pages


def test_prefetch_can_be_switched_off(tmp_path, monkeypatch):
    fam = make_family(tmp_path, experts=1)
    cfg = _config(tmp_path / "c.yaml", {"merge_method": "passthrough", "models": [{"model": str(fam.experts[0])}]})
    monkeypatch.setenv("MERGEHUB_PREFETCH", "0")
    assert prefetch.start_for_config(cfg) is None
