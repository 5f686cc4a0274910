"""The counter-based random stream (operators/random_stream.py) behind DARE and DELLA drops."""

from __future__ import annotations

import random

import pytest
import torch

from mergehub.engine.operators import random_stream as rs

MASK = 0xFFFFFFFF


def mix32_python(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def draw_python(key: tuple[int, int], i: int) -> int:
    return mix32_python((mix32_python((i & MASK) ^ key[0]) + ((i >> 32) ^ key[1])) & MASK) >> 8


def test_the_draws_are_the_documented_formula():
    key = rs.stream_key(7, "model.layers.0.mlp.up_proj.weight", 2)
    starts = [0, 12345, (1 << 32) - 3, (5 << 32) + 17]  # across the 32-bit boundary the high word enters
    for start in starts:
        got = rs.draws24(key, start, 8).tolist()
        assert got == [draw_python(key, start + j) for j in range(8)]


def test_the_16_bit_split_multiply_wraps_like_uint32():
    rng = random.Random(0)
    values = [0, 1, MASK, 1 << 31, 0xDEADBEEF] + [rng.getrandbits(32) for _ in range(1000)]
    x = torch.tensor(values, dtype=torch.int64)
    for constant in (0x7FEB352D, 0x846CA68B, MASK):
        assert rs._mul32(x, constant).tolist() == [(v * constant) & MASK for v in values]


def test_a_draw_depends_only_on_key_and_index():
    key = rs.stream_key(1, "w", 0)
    whole = rs.draws24(key, 0, 3_000_000)  # spans several of the torch version's chunks
    assert torch.equal(rs.draws24(key, 1_048_570, 20), whole[1_048_570:1_048_590])
    assert not torch.equal(rs.draws24(rs.stream_key(1, "w", 1), 0, 1000), whole[:1000])  # another model
    assert not torch.equal(rs.draws24(rs.stream_key(2, "w", 0), 0, 1000), whole[:1000])  # another seed
    assert not torch.equal(rs.draws24(rs.stream_key(1, "v", 0), 0, 1000), whole[:1000])  # another tensor


def test_the_draws_look_uniform_and_keep_the_density():
    u = rs.draws24(rs.stream_key(3, "w", 0), 0, 1 << 20).double()
    assert u.min() >= 0 and u.max() < rs.ALL_DRAWS
    assert abs(u.mean().item() / rs.ALL_DRAWS - 0.5) < 0.002
    counts = torch.histc(u, bins=16, min=0, max=rs.ALL_DRAWS)
    assert (counts - (1 << 16)).abs().max() < 5 * 256  # 5σ of a binomial with p = 1/16
    for density in (0.01, 0.3, 0.9):
        kept = (u < rs.keep_threshold(density)).double().mean().item()
        assert abs(kept - density) < 5 * (density * (1 - density) / (1 << 20)) ** 0.5


@pytest.mark.parametrize("density, threshold", [(0.0, 0), (-1.0, 0), (1.0, 1 << 24), (2.0, 1 << 24),
                                                (0.5, 1 << 23), (2 ** -24, 1), (2 ** -25, 1)])
def test_keep_thresholds(density, threshold):
    assert rs.keep_threshold(density) == threshold
