""""Download all" is a tar generated chunk by chunk: its members are the published files, byte
for byte, and no chunk holds more than CHUNK bytes of a file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mergehub.publishing import archive
from mergehub.publishing.outputs import published_files

pytestmark = pytest.mark.django_db


def test_the_archive_holds_every_published_file(merged_run, monkeypatch):
    monkeypatch.setattr(archive, "CHUNK", 4096)  # several chunks per weight file
    chunks = list(archive.tar_chunks(merged_run))
    assert max(len(c) for c in chunks) <= 4096 + 2 * tarfile.BLOCKSIZE
    data = b"".join(chunks)
    assert len(data) % tarfile.BLOCKSIZE == 0
    out = Path(merged_run.output_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"mergehub-run-{merged_run.pk}/{f.name}"
                                             for f in published_files(merged_run)]
        for member in members:
            assert member.isfile() and member.mode == 0o644
            name = member.name.split("/", 1)[1]
            assert tar.extractfile(member).read() == (out / name).read_bytes()


def test_a_file_that_shrinks_while_sent_breaks_the_stream(merged_run, monkeypatch):
    """The header promised the old size: the stream stops instead of writing a corrupt archive."""
    monkeypatch.setattr(archive, "CHUNK", 64)
    chunks = archive.tar_chunks(merged_run)
    first = published_files(merged_run)[0]
    next(chunks)  # the first header: the size is promised
    (Path(merged_run.output_path) / first.name).write_bytes(b"x" * 10)  # rewritten in place, shorter
    with pytest.raises(OSError, match="shrank"):
        list(chunks)
