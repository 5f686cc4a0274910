"""The benchmark's disk probes (bench/measure.py): what they count, and what they leave."""

from __future__ import annotations

import os

from bench.measure import raw_read_throughput, read_while_writing


def test_reading_while_writing_counts_both_and_leaves_no_scratch_file(tmp_path):
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for f in files:
        f.write_bytes(os.urandom(3 << 20))
    scratch = tmp_path / "write-probe.bin"
    nbytes, seconds = read_while_writing(files, scratch, (5 << 20) + 100)  # an unaligned size: whole pages
    assert nbytes == (6 << 20) + (5 << 20) + 4096 and seconds > 0
    assert not scratch.exists()


def test_the_raw_read_counts_every_byte_of_every_file(tmp_path):
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    files[0].write_bytes(os.urandom(1 << 20))
    files[1].write_bytes(os.urandom(12_345))  # not a whole page
    nbytes, seconds = raw_read_throughput(files)
    assert nbytes == (1 << 20) + 12_345 and seconds > 0
