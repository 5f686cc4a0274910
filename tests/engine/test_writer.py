"""The shard writer: the same bytes around the page cache (O_DIRECT) and through it, valid
safetensors files, and a quiet fall back to the page cache wherever O_DIRECT is refused."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
import torch
import xxhash
from safetensors.torch import load_file

from mergehub.engine import writer
from mergehub.engine.writer import OutSpec, ShardedWriter


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # odd sizes: no tensor, and no shard, ends on a block boundary
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randn(1000, 37, generator=g).bfloat16(),
            "c": torch.randn(7, generator=g), "d": torch.randn(4099, generator=g).half()}


def write(directory, direct: bool, max_shard_bytes: int = 10**9, chunk_rows: int = 100,
          **kwargs) -> dict[str, str]:
    directory.mkdir()
    specs = [OutSpec(n, writer.TORCH_TO_SAFETENSORS[t.dtype], tuple(t.shape)) for n, t in tensors().items()]
    w = ShardedWriter(directory, specs, max_shard_bytes, direct=direct, **kwargs)
    for name, t in tensors().items():
        for start in range(0, t.shape[0], chunk_rows):  # rows arrive in pieces, as from the executor
            w.write(name, t[start:start + chunk_rows])
    return w.finish()


def contents(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("max_shard_bytes", [10**9, 20_000])  # one file, or several and an index
def test_direct_and_buffered_writes_give_the_same_files(tmp_path, monkeypatch, max_shard_bytes):
    monkeypatch.setattr(writer, "STAGE_BYTES", 8192)  # several flushes per shard
    direct = write(tmp_path / "direct", True, max_shard_bytes)
    buffered = write(tmp_path / "buffered", False, max_shard_bytes)
    assert direct == buffered and contents(tmp_path / "direct") == contents(tmp_path / "buffered")
    for name, data in contents(tmp_path / "direct").items():
        assert direct[name] == xxhash.xxh3_128(data).hexdigest()
    if max_shard_bytes == 10**9:
        loaded = load_file(tmp_path / "direct" / "model.safetensors")
        assert all(torch.equal(loaded[n], t) for n, t in tensors().items())


@pytest.mark.parametrize("direct", [True, False])
def test_the_sha256_of_manifests_before_0_2_4_is_still_available(tmp_path, monkeypatch, direct):
    monkeypatch.setattr(writer, "STAGE_BYTES", 8192)
    hashes = write(tmp_path / "out", direct, 20_000, hash_name="sha256")
    files = contents(tmp_path / "out")
    assert len(files) > 2 and hashes == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_a_filesystem_refusing_o_direct_is_written_through_the_page_cache(tmp_path, monkeypatch):
    real_fcntl = writer.fcntl.fcntl
    asked = []

    def refuse(fd, cmd, arg=0):
        if cmd == writer.fcntl.F_SETFL and arg & writer._O_DIRECT:
            asked.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(writer.fcntl, "fcntl", refuse)
    hashes = write(tmp_path / "out", True)
    assert asked and hashes == write(tmp_path / "ref", False)


def test_a_write_refused_midway_continues_through_the_page_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "STAGE_BYTES", 8192)
    refused = []

    class RefusesSecondDirectWrite:
        def write(self, fd, data):
            direct = writer.fcntl.fcntl(fd, writer.fcntl.F_GETFL) & writer._O_DIRECT
            if direct and len(refused) < 1 and os.lseek(fd, 0, os.SEEK_CUR) > 0:
                refused.append(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
            return os.write(fd, data)

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(writer, "os", RefusesSecondDirectWrite())
    hashes = write(tmp_path / "out", True)
    monkeypatch.undo()
    assert refused and hashes == write(tmp_path / "ref", False)
    assert contents(tmp_path / "out") == contents(tmp_path / "ref")


def test_other_write_errors_are_not_swallowed(tmp_path, monkeypatch):
    class Full:
        def write(self, fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(writer, "os", Full())
    with pytest.raises(OSError) as info:
        write(tmp_path / "out", True)
    assert info.value.errno == errno.ENOSPC
