"""Cold-cache measurements of child processes: wall time, bytes read from storage, peak RSS.

- Page cache eviction: ``os.sync()`` (so no dirty page is left to write back), then
  ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` on every file. No root needed.
- A child's counters come from ``os.wait4``: ``ru_maxrss`` (KiB) is its peak RSS,
  ``ru_inblock`` × 512 the bytes it read from storage (the kernel's task I/O accounting, the
  same counter as ``read_bytes`` in /proc/PID/io; page-cache hits and mmap faults served from
  cache are not counted, faults that go to the disk are). Both include reaped grandchildren.
- Where ``ru_inblock`` stays empty (some kernels and containers), ``/proc/PID/io`` is sampled
  until the child exits instead; ``inblock_works`` decides which by reading a known file cold.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 16 << 20
# MergeHub's reader: 4 MiB pieces of a range, 4 at a time (engine/reader.py, executor.py)
PIECE_BYTES = 4 << 20
PIECE_THREADS = 4
SAMPLE_INTERVAL_S = 0.02


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    wall_s: float
    read_bytes: int
    peak_rss_bytes: int
    timed_out: bool = False


def evict(paths: Iterable[Path]) -> None:
    """Drop every given file from the page cache."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in Path(root).rglob("*") if p.is_file())


def _proc_read_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_child(argv: list[str], *, log: Path, sample_proc_io: bool = False,
              env: dict[str, str] | None = None, timeout_s: float | None = None) -> ChildResult:
    """Run ``argv`` with output to ``log``; measure it with wait4 (or /proc sampling).
    A child still running after ``timeout_s`` is killed (``timed_out`` is then True)."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill) if timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        sampled = 0
        if sample_proc_io:
            while True:
                # WNOWAIT leaves the exited child a zombie, so its final counters can be read.
                exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                sampled = max(sampled, _proc_read_bytes(proc.pid) or 0)
                if exited is not None:
                    break
                time.sleep(SAMPLE_INTERVAL_S)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen (no kill after)
        if timer is not None:
            timer.cancel()
    read = sampled if sample_proc_io else usage.ru_inblock * 512
    return ChildResult(proc.returncode, wall, read, usage.ru_maxrss * 1024,
                       killed.is_set() and proc.returncode != 0)


def inblock_works(probe: Path, scratch: Path) -> bool:
    """Read ``probe`` cold in a child; True when wait4's ru_inblock agrees with /proc/self/io."""
    code = (
        "import sys\n"
        "def rb():\n"
        "    return int([l for l in open('/proc/self/io') if l.startswith('read_bytes')][0].split()[1])\n"
        "before = rb()\n"
        f"with open(sys.argv[1], 'rb', buffering=0) as f:\n"
        f"    while f.read({READ_CHUNK}): pass\n"
        "print(rb() - before)\n"
    )
    evict([probe])
    log = scratch / "inblock-probe.log"
    result = run_child([sys.executable, "-c", code, str(probe)], log=log)
    try:
        proc_bytes = int(log.read_text().split()[-1])
    except (ValueError, IndexError):
        proc_bytes = 0
    size = probe.stat().st_size
    # Both counters must see most of the file: it was evicted, so it came from storage.
    return proc_bytes >= 0.9 * size and result.read_bytes >= 0.9 * proc_bytes


def raw_read_throughput(paths: list[Path], direct: bool = False) -> tuple[int, float] | None:
    """Read every file sequentially in 16 MiB chunks, cold; return (bytes, seconds). With
    ``direct`` the reads go around the page cache (O_DIRECT, as MergeHub reads cold ranges);
    then None where the filesystem refuses it."""
    evict(paths)
    started = time.perf_counter()
    try:
        total = _read_files(paths, direct)
    except OSError:
        if direct:
            return None  # this filesystem refuses O_DIRECT (at open or at the first read)
        raise
    return total, time.perf_counter() - started


def read_while_writing(paths: list[Path], scratch: Path, write_bytes: int) -> tuple[int, float]:
    """Read every file cold the way MergeHub reads (``_read_in_pieces``) while another thread
    writes ``write_bytes`` to ``scratch`` (around the page cache where the filesystem allows
    it, as MergeHub writes its output, then fsync); return (bytes read and written, seconds
    until both are done). Where reads and writes share the disk's bandwidth, a merge that
    reads R bytes and writes W needs at least (R + W) / this rate."""
    evict(paths)
    failed: list[OSError] = []
    written = [0]

    def write() -> None:
        try:
            written[0] = _write_zeros(scratch, write_bytes)
        except OSError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, name="bench-write")
    started = time.perf_counter()
    writer.start()
    try:
        total = _read_in_pieces(paths)
    finally:
        writer.join()
        scratch.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    if failed:
        raise failed[0]
    return total + written[0], seconds


def _read_files(paths: list[Path], direct: bool) -> int:
    view = memoryview(mmap.mmap(-1, READ_CHUNK))  # page-aligned, as O_DIRECT needs
    flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
    total = 0
    for path in paths:
        fd = os.open(path, flags)
        try:
            offset = 0
            while n := os.preadv(fd, [view], offset):
                offset += n
            total += offset
        finally:
            os.close(fd)
    return total


def _read_in_pieces(paths: list[Path]) -> int:
    """Every file read in ``PIECE_BYTES`` pieces, ``PIECE_THREADS`` at a time, around the page
    cache where the filesystem allows it: how MergeHub's reader fetches a cold range."""
    fds = [_open_for_reading(path) for path in paths]
    local = threading.local()

    def piece(job: tuple[int, int]) -> int:
        fd, offset = job
        if not hasattr(local, "view"):
            local.view = memoryview(mmap.mmap(-1, PIECE_BYTES))  # page-aligned, as O_DIRECT needs
        return os.preadv(fd, [local.view], offset)

    jobs = [(fd, offset) for fd, path in zip(fds, paths)
            for offset in range(0, path.stat().st_size, PIECE_BYTES)]
    try:
        with ThreadPoolExecutor(PIECE_THREADS) as pool:
            return sum(pool.map(piece, jobs))
    finally:
        for fd in fds:
            os.close(fd)


def _open_for_reading(path: Path) -> int:
    """A descriptor reading around the page cache, or through it where O_DIRECT is refused
    (at open or at the first read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [memoryview(mmap.mmap(-1, mmap.PAGESIZE))], 0)
        return fd
    except OSError:
        os.close(fd)
        return os.open(path, os.O_RDONLY)


def _write_zeros(path: Path, nbytes: int) -> int:
    """About ``nbytes`` written sequentially (rounded up to whole pages, as O_DIRECT needs),
    then fsync; returns the bytes written."""
    chunk = memoryview(mmap.mmap(-1, READ_CHUNK))  # zeros, page-aligned
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags | getattr(os, "O_DIRECT", 0))
    except OSError:
        fd = os.open(path, flags)  # no O_DIRECT on this filesystem
    try:
        written = 0
        while written < nbytes:
            want = min(READ_CHUNK, -(-(nbytes - written) // mmap.PAGESIZE) * mmap.PAGESIZE)
            written += os.write(fd, chunk[:want])
        os.fsync(fd)
        return written
    finally:
        os.close(fd)
