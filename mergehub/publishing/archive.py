""""Download all": the run's published files as one uncompressed tar, made chunk by chunk.

A tar member is a 512-byte header, the file's bytes and zero padding to the next 512 bytes;
the archive ends with two zero blocks. So the archive is generated while it is sent: each
file is opened in turn (outputs.open_at: no link followed) and read ``CHUNK`` bytes at a time;
no file is ever held in memory whole, and nothing is written to disk. Safetensors weights do
not compress, hence no compression (and any tar reads it).

A file must keep the size it had when its header was written: if it shrinks meanwhile (nobody
rewrites a published model, but a disk can fail) the stream stops with an error, so the client
sees a broken download instead of a silently corrupt archive.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator

from mergehub.runs.models import MergeRun

from .outputs import ModelFile, open_at, opened_files

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK = 1 << 20  # bytes read and sent at a time


def archive_folder(run: MergeRun) -> str:
    """The folder the archive unpacks into (and its file name without ``.tar``)."""
    return f"mergehub-run-{run.pk}"


def archive_filename(run: MergeRun) -> str:
    return f"{archive_folder(run)}.tar"


def member_header(folder: str, file: ModelFile, st: os.stat_result) -> bytes:
    info = tarfile.TarInfo(f"{folder}/{file.name}")
    info.size, info.mtime, info.mode, info.type = st.st_size, int(st.st_mtime), 0o644, tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _file_chunks(fd: int, size: int, name: str) -> Iterator[bytes]:
    left = size
    while left:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            raise OSError(f"{name} shrank while it was sent ({size - left} of {size} bytes); the archive is incomplete")
        left -= len(chunk)
        yield chunk
    if size % BLOCK:
        yield b"\0" * (BLOCK - size % BLOCK)


def tar_chunks(run: MergeRun) -> Iterator[bytes]:
    """The archive's bytes, in chunks of at most ``CHUNK`` (plus headers and padding)."""
    folder = archive_folder(run)
    with opened_files(run) as (files, dir_fd):
        for file in files:
            fd, st = open_at(dir_fd, file.name)
            try:
                yield member_header(folder, file, st)
                yield from _file_chunks(fd, st.st_size, file.name)
            finally:
                os.close(fd)
    yield b"\0" * (2 * BLOCK)
