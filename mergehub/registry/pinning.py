"""Pinned checkpoint files: what was registered is what gets merged.

At registration each weight file's identity (device, inode, size, mtime) is recorded; the
content hash follows at index time. At index and merge time the checkpoint is resolved again
from its root, one component at a time with ``O_NOFOLLOW`` (so a directory or file swapped for
a symlink after registration is refused, whatever the link's target), each weight file is
opened the same way and its ``fstat`` compared with the record. A file that changed or moved is
refused with a message that says to re-index it (a re-index pins the files as they are then,
after the same checks) or register it again.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mergehub.engine.api import MergeHubError

from . import roots

PINNED_SUFFIXES = (".safetensors", ".safetensors.index.json")


class PinMismatch(MergeHubError):
    """A registered checkpoint's files changed or moved since they were pinned."""


def pinned_names(directory: Path) -> list[str]:
    """The weight files of a checkpoint directory (and a sharded model's index), sorted.
    A name that is not UTF-8 is refused: it could not be stored or shown."""
    names = []
    for name in os.listdir(directory):
        if not name.endswith(PINNED_SUFFIXES):
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise MergeHubError(f"{directory}: a file name is not valid UTF-8 "
                                f"({name.encode('utf-8', 'surrogateescape')!r}); rename it") from None
        names.append(name)
    return sorted(names)


def open_from_root(root: Path, target: Path, *, directory: bool = False) -> int:
    """A descriptor for ``target`` (a path inside ``root``, links already resolved), opened
    from ``root`` one component at a time without following any link. OSError (ELOOP,
    ENOTDIR, ENOENT) if a component is now a link or is gone."""
    parts = target.relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i, part in enumerate(parts):
        wants_dir = directory or i < len(parts) - 1
        try:
            next_fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if wants_dir else 0),
                              dir_fd=fd)
        finally:
            os.close(fd)
        fd = next_fd
    return fd


def identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def pin(directory: Path, root: Path) -> dict[str, list[int]]:
    """{file: [device, inode, size, mtime_ns]} of the checkpoint's weight files. The directory
    is reached from ``root`` without following links, and each file's resolved path must lie
    inside ``root`` (a Hub snapshot's files are links into its repository's blobs: ``root`` is
    then the repository's folder in the cache)."""
    root = Path(os.path.realpath(root))
    try:
        os.close(open_from_root(root, directory, directory=True))
    except (OSError, ValueError) as err:
        raise PinMismatch(f"{directory} moved or is now a link ({getattr(err, 'strerror', err)}); "
                          "register the checkpoint again") from None
    pins = {}
    for name in pinned_names(directory):
        real = Path(os.path.realpath(directory / name))
        if not (real == root or real.is_relative_to(root)):
            raise PinMismatch(f"{directory / name} leads outside its root; copy the real file into the "
                              "checkpoint directory and register it again")
        pins[name] = _stat_from_root(root, real, directory / name)
    return pins


def _stat_from_root(root: Path, real: Path, shown: Path) -> list[int]:
    try:
        fd = open_from_root(root, real)
    except OSError as err:
        raise PinMismatch(f"{shown} moved or is now a link ({err.strerror}); register the checkpoint again") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PinMismatch(f"{shown} is not a regular file; register the checkpoint again")
    return identity(st)


def changes(recorded: dict[str, list[int]], current: dict[str, list[int]]) -> str | None:
    """What differs between two pin records, in words; None if nothing does."""
    for file, ident in recorded.items():
        if file not in current:
            return f"{file} is gone"
        if list(current[file]) != list(ident):
            return f"{file} changed"
    extra = sorted(set(current) - set(recorded))
    return f"{', '.join(extra)} appeared" if extra else None


# --- registered checkpoints ------------------------------------------------------------------

def checkpoint_root(checkpoint) -> Path:
    """The root the checkpoint's files are pinned to; PinMismatch if it left the team's roots."""
    root = roots.root_of(checkpoint)
    local = checkpoint.source != "hf"
    if root is None or (local and not roots.allowed(Path(checkpoint.path), checkpoint.team)):
        raise PinMismatch(f"{checkpoint.name}: {checkpoint.path} is no longer inside your team's checkpoint "
                          "roots; register it again under one")
    return root


def pin_checkpoint(checkpoint) -> dict[str, list[int]]:
    """Pin the files of a checkpoint whose ``path`` is set (registration, index)."""
    root = checkpoint_root(checkpoint)
    try:
        return pin(Path(checkpoint.path), root)
    except PinMismatch as err:
        raise PinMismatch(f"{checkpoint.name}: {err}") from None


def verify_checkpoint(checkpoint) -> None:
    """PinMismatch unless the checkpoint's files are still the ones pinned (before a merge)."""
    if not checkpoint.file_identity:
        raise PinMismatch(f"{checkpoint.name} was registered before MergeHub pinned files; re-index it once "
                          "before merging it")
    difference = changes(checkpoint.file_identity, pin_checkpoint(checkpoint))
    if difference:
        raise PinMismatch(f"{checkpoint.name}: {difference} since it was registered or last indexed; re-index "
                          "it (or register it again) before merging it")
