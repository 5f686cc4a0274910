"""Slabs: aligned views, overflow that grows the slab at its next reset, a pool whose waiters
give up once the pipeline stops, and the heap retained during a merge and returned after."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from mergehub.engine import buffers
from mergehub.engine.buffers import ALIGN, Slab, SlabPool, aligned_empty


def test_aligned_empty_is_aligned_and_sized():
    for n in (0, 1, 4095, 4096, 10_000):
        t = aligned_empty(n)
        assert t.numel() == n and t.dtype == torch.uint8 and t.data_ptr() % ALIGN == 0


def test_slab_hands_out_disjoint_aligned_views():
    slab = Slab(4 * ALIGN)
    a, b = slab.take(10), slab.take(ALIGN + 1)
    assert a.data_ptr() % ALIGN == 0 and b.data_ptr() % ALIGN == 0
    a.fill_(1)
    b.fill_(2)
    assert int(a.sum()) == 10 and int(b.sum()) == 2 * (ALIGN + 1)
    t = slab.take_tensor((3, 5), torch.float32)
    assert t.shape == (3, 5) and t.dtype == torch.float32


def test_overflow_is_served_and_the_slab_grows_at_reset():
    slab = Slab(ALIGN)
    first = slab.take(ALIGN)
    extra = slab.take(3 * ALIGN)  # does not fit: a buffer of its own
    first.fill_(7)
    extra.fill_(9)
    assert int(first.float().mean()) == 7  # not overwritten by the overflow
    slab.reset()
    views = [slab.take(ALIGN), slab.take(3 * ALIGN)]
    base = views[0].data_ptr()
    assert views[1].data_ptr() == base + ALIGN  # both now inside the grown slab
    assert slab._buffer.numel() == buffers.MAX_KEPT_BYTES  # reserved once, touched as used


def test_a_huge_unit_does_not_stay_resident(monkeypatch):
    monkeypatch.setattr(buffers, "MAX_KEPT_BYTES", 2 * ALIGN)
    slab = Slab(ALIGN)
    slab.take(8 * ALIGN)
    slab.reset()
    assert slab._buffer.numel() == ALIGN


def test_pool_blocks_until_a_slab_returns_and_stops_waiting_on_stop():
    pool = SlabPool(1)
    held = pool.get()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.get()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # nothing free yet
    pool.put(held)
    waiter.join(2)
    assert got == [held]
    stop = threading.Event()
    stop.set()
    assert pool.get(stop) is None  # empty pool, pipeline stopped: give up instead of hanging


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(buffers._GLIBC is None or not os.path.exists("/proc/self/statm"),
                    reason="needs glibc and /proc")
def test_retained_heap_keeps_freed_memory_then_gives_it_back():
    """Inside: freed 16 MB blocks stay in the heap (reused, never faulted in again). After:
    the memory goes back to the system, so a long-lived worker does not keep its peak."""
    chunk = 16 << 20
    with buffers.retained_heap():
        before = _rss()
        blocks = [torch.ones(chunk // 4) for _ in range(12)]  # touched: resident
        del blocks
        kept = _rss() - before
    released = before + kept - _rss()
    assert kept > 8 * chunk
    assert released > 8 * chunk


@pytest.mark.skipif(buffers._GLIBC is None or not os.path.exists("/proc/self/statm"),
                    reason="needs glibc and /proc")
def test_nested_retained_heaps_give_memory_back_only_at_the_outermost_exit():
    chunk = 16 << 20
    with buffers.retained_heap():
        before = _rss()
        with buffers.retained_heap():  # e.g. indexing a missing expert inside a merge
            blocks = [torch.ones(chunk // 4) for _ in range(12)]
            del blocks
        still_kept = _rss() - before
    assert still_kept > 8 * chunk
    assert before + still_kept - _rss() > 8 * chunk


def test_pool_hands_each_unit_the_slab_that_served_units_its_size():
    """Fresh memory is costly: a big unit goes to the slab that held the last big one, and
    small units leave that slab free."""
    pool = SlabPool(3)
    big, small = pool.get(nbytes=1000), pool.get(nbytes=10)
    pool.put(big)
    pool.put(small)
    assert pool.get(nbytes=10) is small  # the smallest slab that served units this large
    assert pool.get(nbytes=2000) is big  # none did: the one that served the largest
    assert big.served == 2000
