"""Every operator against an independent whole-tensor reference (float32, ≤ 1e-6 relative)."""

from __future__ import annotations

import pytest
import torch
from operator_refs import (
    FAMILY,
    assert_rel,
    make_ctx,
    make_params,
    ref_arcee_fusion,
    ref_family,
    ref_karcher,
    ref_linear,
    ref_model_stock,
    ref_multislerp,
    ref_nearswap,
    ref_nuslerp,
    ref_ram,
    ref_sce,
    ref_slerp,
    run,
)

SHAPES = [(6, 5), (9,), (3, 4, 5)]


def tensors(shape, n, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [base + scale * torch.randn(shape, generator=g) for _ in range(n)]
    return base, xs


def family_uniforms(method, p, shape, ctx):
    if FAMILY[method][0] in ("random", "della"):
        return [ctx.uniform(k, shape) for k in range(len(p.models))]
    return None


FAMILY_CASES = [
    ({}, [{"weight": 0.7}, {"weight": 0.4}, {"weight": -0.3}]),
    ({"lambda": 1.5, "normalize": True}, [{"weight": 0.5}, {"weight": 1.5}, {"weight": 1.0}]),
    ({"rescale": False}, [{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.7},
                          {"weight": 0.8, "density": 0.3}]),
    ({"rescale": True, "normalize": False},
     [{"weight": 1.0, "density": 0.5}, {"weight": -0.6, "density": 0.6}, {"weight": 0.5}]),
    ({}, [{"weight": 1.0, "density": 0.0}, {"weight": 1.0, "density": 1.0},
          {"weight": 0.3, "density": 0.5}]),
]


def _model_params(method, models):
    out = []
    for m in models:
        m = dict(m)
        if FAMILY[method][0] == "della" and 0 < m.get("density", 1.0) < 1:
            m["epsilon"] = min(0.1, m["density"] / 2, (1 - m["density"]) / 2)
        if FAMILY[method][0] == "outliers":
            m["gamma"] = 0.1
        out.append(m)
    return out


@pytest.mark.parametrize("method", sorted(FAMILY))
@pytest.mark.parametrize("case", range(len(FAMILY_CASES)))
@pytest.mark.parametrize("shape", SHAPES)
def test_task_arithmetic_family(method, case, shape):
    shared, models = FAMILY_CASES[case]
    base, xs = tensors(shape, len(models), seed=case)
    p = make_params(method, len(models), shared, _model_params(method, models))
    ctx = make_ctx(shape)
    out = run(method, base, xs, p, ctx)
    assert_rel(out, ref_family(method, base, xs, p, family_uniforms(method, p, shape, ctx)))


@pytest.mark.parametrize("method", sorted(FAMILY))
def test_family_edge_cases(method):
    shape = (8, 6)
    base, xs = tensors(shape, 3, seed=7)
    xs[1] = base.clone()  # an all-zero delta (e.g. an expert block that was not read)
    xs[2][:4] = base[:4]  # half of a delta unread
    p = make_params(method, 3, {}, _model_params(method, [
        {"weight": -0.5, "density": 0.5}, {"weight": 1.0, "density": 0.5},
        {"weight": 0.9, "density": 0.6}]))
    ctx = make_ctx(shape)
    assert_rel(run(method, base, xs, p, ctx),
               ref_family(method, base, xs, p, family_uniforms(method, p, shape, ctx)))
    # all inputs equal to the base: the output is the base
    same = [base.clone() for _ in range(3)]
    assert torch.equal(run(method, base, same, p, ctx), base)


def test_ties_ties_at_threshold_keep_first_in_flat_order():
    base = torch.zeros(2, 4)
    x = torch.tensor([[0.5, -0.5, 0.2, 0.5], [-0.5, 0.1, 0.0, 0.3]])
    p = make_params("ties", 1, {}, [{"weight": 1.0, "density": 0.25}])  # k = 2 of 8
    out = run("ties", base, [x], p)
    # |0.5| ties four times: the first two in flattened order are kept
    assert out.tolist() == [[0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_breadcrumbs_drops_smallest_and_largest():
    base = torch.zeros(10)
    x = torch.arange(1.0, 11.0)
    p = make_params("breadcrumbs", 1, {}, [{"weight": 1.0, "density": 0.5, "gamma": 0.2}])
    out = run("breadcrumbs", base, [x], p)
    assert out.tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 0, 0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear(shape, normalize):
    _, xs = tensors(shape, 3, seed=3)
    p = make_params("linear", 3, {"normalize": normalize},
                    [{"weight": 0.5}, {"weight": -0.25}, {"weight": 1.25}])
    assert_rel(run("linear", None, xs, p), ref_linear(xs, p))


@pytest.mark.parametrize("shape", SHAPES + [()])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.75, 1.0])
def test_slerp(shape, t):
    base, (x,) = tensors(shape, 1, seed=4, scale=1.0)
    p = make_params("slerp", 1, {"t": t})
    out = run("slerp", base, [x], p)
    assert_rel(out, ref_slerp(base, x, t))
    if t in (0.0, 1.0):
        assert torch.equal(out, base if t == 0 else x)


def test_slerp_nearly_parallel_uses_lerp():
    base, (x,) = tensors((5, 4), 1, seed=5, scale=1e-3)
    p = make_params("slerp", 1, {"t": 0.4})
    assert_rel(run("slerp", base, [x], p), 0.6 * base.double() + 0.4 * x.double())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
def test_nuslerp(shape, with_base, flatten, row_wise):
    base, xs = tensors(shape, 2, seed=6, scale=0.5)
    p = make_params("nuslerp", 2, {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise},
                    [{"weight": 0.3}, {"weight": 0.9}])
    b = base if with_base else None
    assert_rel(run("nuslerp", b, xs, p), ref_nuslerp(b, xs, p))


def test_nuslerp_colinear_and_zero_weights():
    base = torch.zeros(4, 3)
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    p = make_params("nuslerp", 2, {}, [{"weight": 1.0}, {"weight": -1.0}])  # Σw = 0: t = ½
    out = run("nuslerp", base, [x0, 2 * x0], p)
    assert_rel(out, 1.5 * x0.double())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_multislerp(shape, with_base, n):
    base, xs = tensors(shape, n, seed=8, scale=0.5)
    p = make_params("multislerp", n, {}, [{"weight": w} for w in (0.5, 0.2, 0.3)[:n]])
    b = base if with_base else None
    assert_rel(run("multislerp", b, xs, p), ref_multislerp(b, xs, p))


def test_multislerp_unnormalized_weights():
    base, xs = tensors((5, 3), 3, seed=9, scale=0.5)
    p = make_params("multislerp", 3, {"normalize_weights": False},
                    [{"weight": 0.6}, {"weight": 0.7}, {"weight": 0.1}])
    assert_rel(run("multislerp", base, xs, p), ref_multislerp(base, xs, p))


@pytest.mark.parametrize("shape", SHAPES + [()])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_karcher(shape, n):
    _, xs = tensors(shape, n, seed=10, scale=1.0)
    p = make_params("karcher", n)
    assert_rel(run("karcher", None, xs, p), ref_karcher(xs))


def test_karcher_with_zero_input_and_tight_iterations():
    _, xs = tensors((6, 4), 3, seed=11, scale=1.0)
    xs[1] = torch.zeros(6, 4)
    p = make_params("karcher", 3, {"max_iter": 2, "tol": 1e-6})
    assert_rel(run("karcher", None, xs, p), ref_karcher(xs, max_iter=2, tol=1e-6))
    zeros = [torch.zeros(3), torch.zeros(3)]
    assert torch.equal(run("karcher", None, zeros, make_params("karcher", 2)), torch.zeros(3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_model_stock(shape, filter_wise, n):
    base, xs = tensors(shape, n, seed=12)
    p = make_params("model_stock", n, {"filter_wise": filter_wise})
    assert_rel(run("model_stock", base, xs, p), ref_model_stock(base, xs, filter_wise))


def test_model_stock_opposite_deltas_keep_base():
    base, (x,) = tensors((4, 3), 1, seed=13)
    xs = [x, 2 * base - x]  # δ and −δ: cos θ = −1, 1 + (N−1)cos θ = 0
    p = make_params("model_stock", 2)
    assert_rel(run("model_stock", base, xs, p), base)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("topk", [1.0, 0.5, 0.2, 0.0])
@pytest.mark.parametrize("n", [1, 3])
def test_sce(shape, topk, n):
    base, xs = tensors(shape, n, seed=14)
    p = make_params("sce", n, {"select_topk": topk})
    assert_rel(run("sce", base, xs, p), ref_sce(base, xs, topk))


def test_sce_tiny_deltas_use_equal_weights():
    base, xs = tensors((6, 5), 3, seed=15, scale=1e-4)  # Σ mean(δ²) < 1e-6
    p = make_params("sce", 3)
    assert_rel(run("sce", base, xs, p), ref_sce(base, xs))


def _sparse_deltas(shape, n, seed):
    base, xs = tensors(shape, n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for x in xs:  # each expert changes only some entries, so overlaps and uniques both occur
        unchanged = torch.rand(shape, generator=g) < 0.5
        x[unchanged] = base[unchanged]
        tiny = torch.rand(shape, generator=g) < 0.1  # below epsilon: counts as unchanged
        x[tiny] = base[tiny] + 1e-6
    return base, xs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3])
def test_ram(shape, n):
    base, xs = _sparse_deltas(shape, n, seed=16)
    p = make_params("ram", n, {"epsilon": 1e-3})
    assert_rel(run("ram", base, xs, p), ref_ram(base, xs, 1e-3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("r,alpha", [(0.1, 0.2), (0.5, 5.0)])
def test_ramplus_tl(shape, n, r, alpha):
    base, xs = _sparse_deltas(shape, n, seed=17)
    p = make_params("ramplus_tl", n, {"r": r, "alpha": alpha})
    assert_rel(run("ramplus_tl", base, xs, p), ref_ram(base, xs, 1e-5, plus=(r, alpha)))


def test_ramplus_model_without_changes():
    base, xs = _sparse_deltas((5, 4), 2, seed=18)
    xs.append(base.clone())
    p = make_params("ramplus_tl", 3)
    out = run("ramplus_tl", base, xs, p)
    assert not out.isnan().any()
    assert_rel(out, ref_ram(base, xs, 1e-5, plus=(0.1, 0.2)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.05, 0.2, 10.0])
def test_nearswap(shape, t):
    base, (x,) = tensors(shape, 1, seed=19)
    x[0] = base[0]  # zero distance
    p = make_params("nearswap", 1, {"t": t})
    assert_rel(run("nearswap", base, [x], p), ref_nearswap(base, x, t))


@pytest.mark.parametrize("shape", SHAPES + [(), (40, 30)])
def test_arcee_fusion(shape):
    base, (x,) = tensors(shape, 1, seed=20, scale=0.5)
    p = make_params("arcee_fusion", 1)
    assert_rel(run("arcee_fusion", base, [x], p), ref_arcee_fusion(base, x))


def test_arcee_fusion_equal_inputs_give_base():
    base, _ = tensors((4, 5), 0, seed=21)
    p = make_params("arcee_fusion", 1)
    assert torch.equal(run("arcee_fusion", base, [base.clone()], p), base)


def test_passthrough():
    x = torch.randn(3, 4)
    assert torch.equal(run("passthrough", None, [x], make_params("passthrough", 1)), x)
    p = make_params("passthrough", 1, {}, [{"scale": -2.0}])
    assert torch.equal(run("passthrough", None, [x], p), -2.0 * x)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "linear", "ram", "sce",
                                    "model_stock", "karcher", "nearswap", "slerp"])
def test_merge_leaves_its_arguments_untouched(method):
    base, xs = tensors((6, 5), 3 if method not in ("nearswap", "slerp") else 1, seed=22)
    copies = [base.clone()] + [x.clone() for x in xs]
    models = {"weight": 0.5, "density": 0.5} if method in FAMILY or method == "linear" else {}
    shared = {"t": 0.3} if method in ("nearswap", "slerp") else {}
    p = make_params(method, len(xs), shared, models)
    run(method, None if method in ("linear", "karcher") else base, xs, p)
    assert all(torch.equal(a, b) for a, b in zip(copies, [base] + xs))
