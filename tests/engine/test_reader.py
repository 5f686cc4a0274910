"""RangeReader: uncached (O_DIRECT) reads widened to pages, split into concurrent pieces,
reusing the last page of an adjacent read, and falling back to the page cache where the
filesystem refuses O_DIRECT; every path returns exactly the bytes of the file."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import on_tmpfs

from mergehub.demo.tiny import save_model
from mergehub.engine import reader as reader_mod
from mergehub.engine.iostats import evict_from_page_cache
from mergehub.engine.pagecache import fully_cached
from mergehub.engine.buffers import Slab
from mergehub.engine.layout import read_model_layout
from mergehub.engine.reader import RangeReader

NAME = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def model(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"model.norm.weight": torch.randn(13, generator=g),  # leaves the next tensor unaligned
               NAME: torch.randn(300, 77, generator=g)}
    save_model(tmp_path / "m", tensors)
    return read_model_layout(tmp_path / "m").tensors[NAME], tensors[NAME]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("pooled", [True, False])
def test_rows_are_the_file_bytes(model, monkeypatch, direct, pooled):
    info, expected = model
    evict_from_page_cache([info.file])  # cold: the uncached (O_DIRECT) path when direct
    monkeypatch.setattr(reader_mod, "PIECE_BYTES", 4096)  # many pieces per read
    pool = ThreadPoolExecutor(3) if pooled else None
    with RangeReader(sequential=False, direct=direct, pool=pool) as r:
        slab = Slab(1 << 20)
        for r0, r1 in [(0, 300), (5, 6), (6, 90), (90, 91), (200, 300), (0, 1)]:
            got = r.read_rows(info, r0, r1, slab)
            assert torch.equal(got, expected[r0:r1]), (r0, r1)
        assert r.logical_bytes == (300 + 1 + 84 + 1 + 100 + 1) * info.row_bytes
    if pool:
        pool.shutdown()


def test_o_direct_refused_at_open_falls_back_to_the_page_cache(model, monkeypatch):
    info, expected = model
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with RangeReader(sequential=False) as r:
        assert torch.equal(r.read_rows(info, 3, 40), expected[3:40])


def test_o_direct_refused_at_read_falls_back_to_the_page_cache(model, monkeypatch):
    info, expected = model
    evict_from_page_cache([info.file])
    real_preadv = os.preadv
    calls = []

    def refuse_first(fd, buffers, offset, *rest):
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset, *rest)

    monkeypatch.setattr(os, "preadv", refuse_first)
    with RangeReader(sequential=False) as r:
        assert torch.equal(r.read_rows(info, 10, 20), expected[10:20])
        assert torch.equal(r.read_rows(info, 20, 299), expected[20:299])


def test_a_file_shorter_than_its_header_says_is_a_clear_error(model):
    info, _ = model
    with open(info.file, "r+b") as f:
        f.truncate(info.start + 10 * info.row_bytes)
    with RangeReader(sequential=False) as r, pytest.raises(Exception, match="truncated"):
        r.read_rows(info, 0, 300)


def test_reads_through_the_page_cache_announce_their_range(model, monkeypatch):
    """Through the page cache each read asks the kernel for exactly its range first
    (POSIX_FADV_WILLNEED): under POSIX_FADV_RANDOM a large cold read would otherwise go in small
    synchronous requests."""
    info, expected = model
    advice = []
    real = os.posix_fadvise

    def spy(fd, offset, length, how):
        advice.append((offset, length, how))
        return real(fd, offset, length, how)

    monkeypatch.setattr(reader_mod.os, "posix_fadvise", spy)
    with RangeReader(sequential=False, direct=False) as r:
        assert torch.equal(r.read_rows(info, 10, 40, Slab(1 << 20)), expected[10:40])
    assert (info.start + 10 * info.row_bytes, 30 * info.row_bytes, os.POSIX_FADV_WILLNEED) in advice


def test_a_cached_range_is_copied_from_the_cache(model, monkeypatch):
    """Warm pages are not read again from storage: no uncached read happens at all."""
    info, expected = model
    with open(info.file, "rb") as f:
        f.read()  # now every page is cached
        assert fully_cached(f.fileno(), info.start, info.nbytes)

    def no_storage_reads(*args):
        raise AssertionError("read around the page cache although the range was cached")

    monkeypatch.setattr(RangeReader, "_read_pieces", no_storage_reads)
    with RangeReader(sequential=False) as r:
        assert torch.equal(r.read_rows(info, 7, 250, Slab(1 << 20)), expected[7:250])


def test_fully_cached_sees_eviction(model):
    info, _ = model
    with open(info.file, "rb") as f:
        f.read()
        assert fully_cached(f.fileno(), 0, os.path.getsize(info.file))
        assert fully_cached(f.fileno(), 5, 0)
        evict_from_page_cache([info.file])
        if on_tmpfs(info.file):
            pytest.skip("tmpfs pages cannot be evicted")
        assert not fully_cached(f.fileno(), info.start, info.nbytes)


def test_a_partly_cached_range_reads_only_its_missing_pages(model, monkeypatch):
    """Cached pages (a warm-up stopped inside the range, or holes in one) are copied; only the
    runs of missing pages go to storage, so no byte is fetched twice."""
    info, expected = model
    evict_from_page_cache([info.file])
    if on_tmpfs(info.file):
        pytest.skip("tmpfs pages cannot be evicted")
    page = 4096
    first = info.start - info.start % page
    warm = [(first + page, 2 * page), (first + 5 * page, page)]  # two cached runs inside the tensor
    with open(info.file, "rb") as f:
        for at, n in warm:
            os.pread(f.fileno(), n, at)
    direct: list[tuple[int, int]] = []
    real = RangeReader._read_pieces

    def spy(self, fd, path, offset, buf, need):
        direct.append((offset, offset + buf.numel()))
        return real(self, fd, path, offset, buf, need)

    monkeypatch.setattr(RangeReader, "_read_pieces", spy)
    with RangeReader(sequential=False) as r:
        assert torch.equal(r.read_rows(info, 0, 300, Slab(1 << 20)), expected)
        got = r.read_rows(info, 299, 300, Slab(1 << 20))  # the next read after a copied page
        assert torch.equal(got, expected[299:300])
    for a, b in direct:
        for at, n in warm:
            assert b <= at or a >= at + n, "a cached page was read from storage again"
    assert direct, "the missing pages were not read around the cache"


def test_a_copied_last_page_is_not_reused_for_the_next_read(model):
    info, expected = model
    evict_from_page_cache([info.file])
    if on_tmpfs(info.file):
        pytest.skip("tmpfs pages cannot be evicted")
    end = info.start + 100 * info.row_bytes
    with open(info.file, "rb") as f:  # cache the page the first read ends in
        os.pread(f.fileno(), 4096, end - end % 4096)
    with RangeReader(sequential=False) as r:
        assert torch.equal(r.read_rows(info, 0, 100), expected[:100])
        assert torch.equal(r.read_rows(info, 100, 200), expected[100:200])
