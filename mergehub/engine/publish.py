"""Atomic publication of an output directory.

Everything is written into a staging directory next to the target (same filesystem), files
and directory are fsynced, and one rename makes it visible. With ``force`` an existing target
is swapped out with ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, so readers see the
old or the new directory, never a mix and never nothing. On any failure the staging directory
is removed and the target is untouched.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import uuid
from pathlib import Path

from .errors import DiskFull, OutputExists
from .libc import LIBC

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False if the platform cannot."""
    fn = getattr(LIBC, "renameat2", None)  # glibc ≥ 2.28
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise OutputExists(f"{out_dir} already exists; choose another output directory or pass "
                           "--force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExists(f"{out_dir} exists and is not a directory; remove it or choose another path")


_HOST = socket.gethostname().replace("-", "_")


def remove_stale_staging(parent: Path) -> list[Path]:
    """Delete staging directories of processes on this host that died (e.g. a SIGKILLed
    worker). Other hosts' staging directories on a shared filesystem are left alone."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name.rsplit(".staging-", 1)
        if not entry.name.startswith(".") or len(parts) != 2:
            continue
        fields = parts[1].split("-")
        if len(fields) != 3 or fields[0] != _HOST or not fields[1].isdigit():
            continue
        try:
            os.kill(int(fields[1]), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by someone else
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


class Staging:
    """``with Staging(out_dir, force) as stage: write into stage.path; stage.publish()``."""

    def __init__(self, out_dir: Path, force: bool = False):
        self.out_dir = Path(out_dir).absolute()
        self.force = force
        check_target(self.out_dir, force)
        # parents we create are ours to remove again if nothing gets published
        self.created = [p for p in self.out_dir.parents if not p.exists()]
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.out_dir.parent)
        self.path = self.out_dir.parent / (f".{self.out_dir.name}.staging-{_HOST}-{os.getpid()}-"
                                           f"{uuid.uuid4().hex[:8]}")
        self.published = False

    def __enter__(self) -> "Staging":
        try:
            self.path.mkdir()
        except OSError as exc:
            self._remove_created_parents()
            raise _as_user_error(exc, self.out_dir) from None
        return self

    def publish(self) -> None:
        for p in self.path.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(self.path)
        check_target(self.out_dir, self.force)
        if self.out_dir.exists():
            if _renameat2_exchange(self.path, self.out_dir):
                shutil.rmtree(self.path)  # now holds the old output
            else:
                old = self.path.with_name(self.path.name + ".old")
                os.rename(self.out_dir, old)
                os.rename(self.path, self.out_dir)
                shutil.rmtree(old)
        else:
            os.rename(self.path, self.out_dir)
        fsync_dir(self.out_dir.parent)
        self.published = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created_parents()
        if isinstance(exc, OSError):
            raise _as_user_error(exc, self.out_dir) from exc

    def _remove_created_parents(self) -> None:
        for parent in self.created:  # deepest first; a non-empty one is no longer only ours
            try:
                parent.rmdir()
            except OSError:
                break


def _as_user_error(exc: OSError, out_dir: Path) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left while writing {out_dir}; nothing was published — free "
                        "space or choose another output directory")
    return exc
