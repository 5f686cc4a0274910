"""Property tests: block-local operators agree on row slices, random operators replay, and
declared coefficients describe the output exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from operator_refs import FAMILY, assert_rel, make_ctx, make_params

from mergehub.engine.operators import get_operator

ALL_METHODS = sorted(FAMILY) + [
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "sce", "ram",
    "ramplus_tl", "nearswap", "arcee_fusion", "passthrough"]

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def n_inputs(data, method) -> int:
    op = get_operator(method)
    high = op.max_inputs if op.max_inputs is not None else 3
    return data.draw(st.integers(max(op.min_inputs, 1), max(high, op.min_inputs)), label="n")


def draw_params(data, method, n):
    """Parameter values that exercise both the local and the non-local regimes: half of the
    draws use only the trivial densities/fractions 0 and 1."""
    trivial = data.draw(st.booleans(), label="trivial")
    fraction = st.sampled_from([0.0, 1.0] if trivial else [0.0, 0.3, 0.5, 0.8, 1.0])
    weight = st.sampled_from([-0.5, 0.25, 0.5, 1.0, 1.5])
    shared, models = {}, [{} for _ in range(n)]
    if method in FAMILY:
        shared = {"normalize": data.draw(st.booleans()), "rescale": data.draw(st.booleans()),
                  "lambda": data.draw(st.sampled_from([1.0, 0.5, 2.0]))}
        for m in models:
            m["weight"] = data.draw(weight)
            m["density"] = data.draw(fraction)
            if FAMILY[method][0] == "della" and 0 < m["density"] < 1:
                m["epsilon"] = min(m["density"], 1 - m["density"]) / 2
            if FAMILY[method][0] == "outliers":
                m["gamma"] = data.draw(st.sampled_from([0.0, 0.1, 0.3]))
    elif method == "linear":
        shared = {"normalize": data.draw(st.booleans())}
        for m in models:
            m["weight"] = data.draw(st.sampled_from([0.25, 0.5, 1.0, 1.5]))
    elif method in ("nuslerp", "multislerp"):
        for m in models:
            m["weight"] = data.draw(st.sampled_from([0.25, 0.5, 1.0]))
        if method == "nuslerp":
            shared = {"nuslerp_flatten": data.draw(st.booleans()),
                      "nuslerp_row_wise": data.draw(st.booleans())}
    elif method == "slerp":
        shared = {"t": data.draw(st.sampled_from([0.0, 0.4, 1.0]))}
    elif method == "nearswap":
        shared = {"t": data.draw(st.sampled_from([0.0, 0.05, 0.3]))}
    elif method == "model_stock":
        shared = {"filter_wise": data.draw(st.booleans())}
    elif method == "sce":
        shared = {"select_topk": data.draw(fraction)}
    elif method == "passthrough":
        models[0]["scale"] = data.draw(st.sampled_from([None, 0.5]))
    return make_params(method, n, shared, models)


def draw_inputs(data, method, n):
    ndim = data.draw(st.sampled_from([1, 2, 2, 3]), label="ndim")
    rows = data.draw(st.integers(1, 12), label="rows")
    shape = (rows,) if ndim == 1 else (rows,) + tuple(
        data.draw(st.integers(1, 5), label="dim") for _ in range(ndim - 1))
    seed = data.draw(st.integers(0, 2**16), label="seed")
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = []
    for _ in range(n):
        x = base + 0.1 * torch.randn(shape, generator=g)
        # unread blocks / unchanged entries hold the base's values exactly
        x = torch.where(torch.rand(shape, generator=g) < 0.2, base, x)
        xs.append(x)
    op = get_operator(method)
    return (None if op.base == "ignored" else base), xs, shape


@pytest.mark.parametrize("method", ALL_METHODS)
@PROPERTY
@given(data=st.data())
def test_block_local_operators_agree_on_row_slices(data, method):
    n = n_inputs(data, method)
    p = draw_params(data, method, n)
    base, xs, shape = draw_inputs(data, method, n)
    op = get_operator(method)
    if not op.block_local(p, len(shape)) or len(shape) < 2:
        return
    whole = op.merge(base, xs, p, make_ctx(shape))
    start = data.draw(st.integers(0, shape[0] - 1), label="start")
    end = data.draw(st.integers(start + 1, shape[0]), label="end")
    ctx = make_ctx(shape, rows=(start, end))
    part = op.merge(None if base is None else base[start:end], [x[start:end] for x in xs], p, ctx)
    assert torch.equal(part, whole[start:end]), (method, p)
    event(f"sliced {method}")


@pytest.mark.parametrize("method", ALL_METHODS)
@PROPERTY
@given(data=st.data())
def test_coefficients_describe_the_output(data, method):
    n = n_inputs(data, method)
    p = draw_params(data, method, n)
    base, xs, shape = draw_inputs(data, method, n)
    op = get_operator(method)
    coeffs = op.coefficients(p)
    if coeffs is None:
        assert all(w >= 0 for w in op.planning_weights(p))
        return
    assert op.planning_weights(p) == [abs(c) for c in coeffs]
    assert base is not None and len(coeffs) == n
    expected = base.double() + sum(c * (x.double() - base.double()) for c, x in zip(coeffs, xs))
    assert_rel(op.merge(base, xs, p, make_ctx(shape)), expected)
    event(f"coefficients {method}")


@pytest.mark.parametrize("method", sorted(FAMILY))
@PROPERTY
@given(data=st.data())
def test_certificate_bounds_the_deviation_of_unread_blocks(data, method):
    """out(full) − out(A) = Σ_{(k,b)∉A} c_k·δ_kb, so its norm is within Σ |c_k|·‖δ_kb‖."""
    n = n_inputs(data, method)
    p = draw_params(data, method, n)
    base, xs, shape = draw_inputs(data, method, n)
    op = get_operator(method)
    coeffs = op.coefficients(p)
    if coeffs is None or len(shape) < 2:
        return
    full = op.merge(base, xs, p, make_ctx(shape))
    cut = data.draw(st.integers(0, shape[0]), label="cut")  # rows ≥ cut of expert 0 unread
    partial = [x.clone() for x in xs]
    partial[0][cut:] = base[cut:]
    approx = op.merge(base, partial, p, make_ctx(shape))
    bound = abs(coeffs[0]) * (xs[0][cut:] - base[cut:]).double().norm().item()
    assert (full - approx).double().norm().item() <= bound * (1 + 1e-5) + 1e-6
    event("certified")


RANDOM_METHODS = ["dare_ties", "dare_linear", "della", "della_linear"]


@pytest.mark.parametrize("method", RANDOM_METHODS)
@PROPERTY
@given(data=st.data())
def test_random_operators_replay(data, method):
    n = n_inputs(data, method)
    p = draw_params(data, method, n)
    base, xs, shape = draw_inputs(data, method, n)
    op = get_operator(method)
    assert op.random
    first = op.merge(base, xs, p, make_ctx(shape, seed=7))
    again = op.merge(base, [x.clone() for x in xs], p, make_ctx(shape, seed=7))
    assert torch.equal(first, again)


def test_random_draw_is_the_same_whole_or_in_slices():
    """dare_linear without rescale is block-local: merging rows 0-4 and 5-12 separately gives
    the whole-tensor result bit for bit, and the draw differs for another seed."""
    shape = (13, 7)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) for _ in range(2)]
    p = make_params("dare_linear", 2, {"rescale": False}, {"weight": 1.0, "density": 0.5})
    op = get_operator("dare_linear")
    assert op.block_local(p, 2)
    whole = op.merge(base, xs, p, make_ctx(shape))
    parts = [op.merge(base[a:b], [x[a:b] for x in xs], p, make_ctx(shape, rows=(a, b)))
             for a, b in [(0, 5), (5, 13)]]
    assert torch.equal(torch.cat(parts), whole)
    other = op.merge(base, xs, p, make_ctx(shape, seed=99))
    assert not torch.equal(other, whole)
    changed = (whole != base).float().mean().item()  # each expert keeps ~½: 1 − ¼ changed
    assert 0.6 < changed < 0.9


def test_declared_non_local_operators_really_need_the_whole_tensor():
    shape = (8, 6)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) * torch.linspace(0.1, 2, 8)[:, None]]
    cases = [("ties", {}, {"weight": 1.0, "density": 0.3}),
             ("dare_linear", {}, {"weight": 1.0, "density": 0.5}),
             ("slerp", {"t": 0.5}, {}),
             ("model_stock", {}, {})]
    for method, shared, models in cases:
        inputs = xs
        if method == "model_stock":
            inputs = [xs[0], base - (xs[0] - base) * torch.linspace(-1, 1, 8)[:, None]]
        p = make_params(method, len(inputs), shared, models)
        op = get_operator(method)
        assert not op.block_local(p, 2)
        whole = op.merge(base, inputs, p, make_ctx(shape))
        part = op.merge(base[:2], [x[:2] for x in inputs], p, make_ctx(shape, rows=(0, 2)))
        assert not torch.allclose(part, whole[:2]), method
