"""Warm the page cache with the weights a merge reads whole, while ``mergehub merge`` starts.

Before a merge reads anything the command spends one to two seconds importing torch, then
loads the config and plans. Every method that uses a base reads the base's weights in full,
and the methods that ignore the base read every model in full (their budget is always 1.0),
so a background thread reads those files into the page cache meanwhile, and the executor
later finds them cached (reader.py copies cached ranges instead of going to storage).

It reads nothing a merge would not read, and counts what it reads: bytes are measured on its
own thread (iostats) and the merge adds them to its read metrics (``api.run_merge``). It is
stopped before the executor starts, so no byte is fetched twice, and it takes at most a
quarter of the available memory, so the pages are still cached when the merge gets to them.
The file list comes from the YAML alone, without torch; when anything about it is unusual
nothing is prefetched and the merge reports the problem as usual. ``MERGEHUB_PREFETCH=0``
turns it off.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import yaml

from .iostats import thread_read_bytes
from .model_files import weight_files

CHUNK = 16 << 20  # read in these pieces, the next one requested ahead (POSIX_FADV_WILLNEED)
# Methods whose operator has base = "ignored" (operators/*.py): they read every model whole.
# tests/engine/test_prefetch.py keeps this list in step with the operators.
BASE_IGNORED = frozenset({"linear", "karcher", "passthrough"})


class Prefetch:
    """Reads ``files`` (in order, up to ``limit`` bytes in all) into the page cache on a
    daemon thread; ``finish`` stops it and says how many bytes each file cost from storage."""

    def __init__(self, files: list[Path], limit: int):
        self.files, self.limit = list(files), limit
        self.storage_bytes: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mergehub-prefetch", daemon=True)

    def start(self) -> "Prefetch":
        self._thread.start()
        return self

    def finish(self) -> dict[Path, int]:
        """Stop after the piece being read; storage bytes fetched per file."""
        self._stop.set()
        return self.wait()

    def wait(self) -> dict[Path, int]:
        """Let it read everything (up to the limit); storage bytes fetched per file."""
        self._thread.join()
        return dict(self.storage_bytes)

    def _run(self) -> None:
        left = self.limit
        buf = bytearray(CHUNK)
        for path in self.files:
            if left <= 0 or self._stop.is_set():
                return
            before = thread_read_bytes()
            try:
                left -= _read_ahead(path, left, buf, self._stop)
            except OSError:
                pass  # the merge itself reports an unreadable file
            finally:
                self.storage_bytes[path] = thread_read_bytes() - before


def _read_ahead(path: Path, limit: int, buf: bytearray, stop: threading.Event) -> int:
    """Read ``path`` from the start through the page cache, at most ``limit`` bytes, asking the
    kernel for each next piece while the current one is copied (one request in flight keeps
    this disk at half speed). Returns the bytes read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = min(os.fstat(fd).st_size, limit)
        offset = 0
        os.posix_fadvise(fd, 0, min(CHUNK, end), os.POSIX_FADV_WILLNEED)
        while offset < end and not stop.is_set():
            want = min(CHUNK, end - offset)
            if offset + want < end:
                os.posix_fadvise(fd, offset + want, min(CHUNK, end - offset - want), os.POSIX_FADV_WILLNEED)
            n = os.preadv(fd, [memoryview(buf)[:want]], offset)
            if n <= 0:
                break
            offset += n
        return offset
    finally:
        os.close(fd)


def files_read_whole(config_path: str | os.PathLike, budget: str = "1.0") -> list[Path]:
    """The weight files a merge of this config reads from start to end whatever its plan: the
    base's, or every model's for a method that ignores the base (then only at budget 1).
    Empty when the config is anything but a plain, valid-looking mergekit YAML."""
    try:
        with open(config_path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        method = doc["merge_method"]
        models = [m["model"] for m in doc.get("models") or []]
        base = doc.get("base_model")
        if method in BASE_IGNORED:
            if float(budget) != 1.0:
                return []
            roots = models
        else:
            roots = [base] if base is not None else []
        here = Path(config_path).resolve().parent  # model paths are relative to the config (config.py)
        files: list[Path] = []
        for root in roots:
            if not isinstance(root, str):
                return []
            files += weight_files(here / Path(root).expanduser())
        return files
    except Exception:  # noqa: BLE001 — anything odd: no prefetch; the merge will say what is wrong
        return []


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (1 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


def start_for_config(config_path: str | os.PathLike, budget: str = "1.0") -> Prefetch | None:
    """Start warming what a merge of this config will read whole; None when there is nothing."""
    files = files_read_whole(config_path, budget)
    if not files or os.environ.get("MERGEHUB_PREFETCH") == "0":
        return None
    return Prefetch(files, available_bytes() // 4).start()
