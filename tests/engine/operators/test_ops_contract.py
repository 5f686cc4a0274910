"""Operator metadata: registration, declared parameters, validation, locality and coefficients."""

from __future__ import annotations

import math

import pytest
import torch
from operator_refs import make_ctx, make_params

from mergehub.engine.errors import ConfigError, MergeHubError
from mergehub.engine.operators import OPERATORS, REQUIRED, Param, get_operator

# name: (base rule, min non-base inputs, max non-base inputs)
SHAPE = {
    "linear": ("ignored", 1, None), "task_arithmetic": ("required", 1, None),
    "ties": ("required", 1, None), "dare_ties": ("required", 1, None),
    "dare_linear": ("required", 1, None), "breadcrumbs": ("required", 1, None),
    "breadcrumbs_ties": ("required", 1, None), "della": ("required", 1, None),
    "della_linear": ("required", 1, None), "slerp": ("required", 1, 1),
    "nuslerp": ("optional", 2, 2), "multislerp": ("optional", 1, None),
    "karcher": ("ignored", 1, None), "model_stock": ("required", 2, None),
    "sce": ("required", 1, None), "ram": ("required", 1, None),
    "ramplus_tl": ("required", 1, None), "nearswap": ("required", 1, 1),
    "arcee_fusion": ("required", 1, 1), "passthrough": ("ignored", 1, 1),
}


def test_every_mergekit_method_is_registered():
    get_operator("linear")
    assert set(OPERATORS) == set(SHAPE)
    for name, (base, low, high) in SHAPE.items():
        op = get_operator(name)
        assert (op.name, op.base, op.min_inputs, op.max_inputs) == (name, base, low, high)
        assert op.help
        assert all(isinstance(p, Param) and p.help for p in op.params), name


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known methods: .*task_arithmetic"):
        get_operator("frankenmerge")


@pytest.mark.parametrize("name,param", [
    ("linear", "weight"), ("task_arithmetic", "weight"), ("ties", "weight"),
    ("della", "weight"), ("nuslerp", "weight"), ("multislerp", "weight"),
    ("slerp", "t"), ("nearswap", "t")])
def test_required_parameters(name, param):
    declared = {p.name: p for p in get_operator(name).params}
    assert declared[param].default is REQUIRED


def test_family_defaults_follow_mergekit():
    expected = {  # normalize, rescale
        "task_arithmetic": (False, False), "ties": (True, False), "dare_ties": (False, True),
        "dare_linear": (False, True), "breadcrumbs": (False, False),
        "breadcrumbs_ties": (False, False), "della": (True, True), "della_linear": (False, True),
    }
    for name, (normalize, rescale) in expected.items():
        declared = {p.name: p for p in get_operator(name).params}
        assert declared["normalize"].default is normalize
        assert declared["rescale"].default is rescale
        assert declared["lambda"].default == 1.0 and declared["density"].default == 1.0
        assert declared["density"].scope == "model" and declared["lambda"].scope == "global"
    assert {p.name: p.default for p in get_operator("breadcrumbs").params}["gamma"] == 0.01
    assert {p.name: p.default for p in get_operator("della").params}["epsilon"] == 0.15


def test_random_flags():
    assert {n for n, op in OPERATORS.items() if op.random} == {
        "dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion"}


@pytest.mark.parametrize("density,epsilon", [(0.1, 0.15), (0.9, 0.1), (0.5, 0.5)])
def test_della_rejects_probabilities_outside_0_1(density, epsilon):
    p = make_params("della", 1, {}, [{"weight": 1.0, "density": density, "epsilon": epsilon}])
    with pytest.raises(ConfigError, match="density ± epsilon"):
        get_operator("della").validate(p, "layers.0.q")


def test_della_accepts_trivial_densities_with_any_epsilon():
    p = make_params("della_linear", 2, {}, [{"weight": 1.0, "density": 1.0, "epsilon": 0.5},
                                           {"weight": 1.0, "density": 0.0, "epsilon": 0.5}])
    get_operator("della_linear").validate(p, "t")


def test_weight_sums_of_zero_are_rejected_when_normalizing():
    p = make_params("linear", 2, {}, [{"weight": 1.0}, {"weight": -1.0}])
    with pytest.raises(ConfigError, match="sum to 0"):
        get_operator("linear").validate(p, "t")
    get_operator("linear").validate(make_params("linear", 2, {"normalize": False},
                                                [{"weight": 1.0}, {"weight": -1.0}]), "t")
    p = make_params("multislerp", 2, {}, [{"weight": 1.0}, {"weight": -1.0}])
    with pytest.raises(ConfigError, match="sum to 0"):
        get_operator("multislerp").validate(p, "t")


@pytest.mark.parametrize("name,shared,models", [
    ("ties", {}, {"weight": 1.0, "density": 1.5}),
    ("ties", {}, {"weight": 1.0, "density": -0.1}),
    ("slerp", {"t": 1.2}, {}),
    ("slerp", {"t": -0.1}, {}),
    ("task_arithmetic", {"lambda": math.nan}, {"weight": 1.0}),
    ("karcher", {"max_iter": 2.5}, {}),
    ("linear", {"normalize": 1}, {"weight": 1.0}),
])
def test_parameter_values_are_checked(name, shared, models):
    with pytest.raises(ConfigError):
        make_params(name, 1, shared, models)


def test_optional_parameter_accepts_none():
    scale = {p.name: p for p in get_operator("passthrough").params}["scale"]
    assert scale.coerce(None, "t") is None
    assert scale.coerce(2, "t") == 2.0


@pytest.mark.parametrize("name,shared,models,expected", [
    ("task_arithmetic", {}, {"weight": 0.5}, True),
    ("ties", {}, {"weight": 0.5, "density": 1.0}, True),
    ("ties", {}, {"weight": 0.5, "density": 0.5}, False),
    ("dare_ties", {}, {"weight": 0.5, "density": 0.5}, False),  # rescale by default
    ("dare_ties", {"rescale": False}, {"weight": 0.5, "density": 0.5}, True),
    ("della_linear", {"rescale": False}, {"weight": 0.5, "density": 0.5, "epsilon": 0.1}, True),
    ("breadcrumbs", {}, {"weight": 0.5, "density": 0.9}, False),
    ("breadcrumbs", {}, {"weight": 0.5, "density": 0.0}, True),
    ("linear", {}, {"weight": 0.5}, True),
    ("slerp", {"t": 0.5}, {}, False),
    ("slerp", {"t": 1.0}, {}, True),
    ("nuslerp", {}, {"weight": 1.0}, False),
    ("nuslerp", {"nuslerp_flatten": False}, {"weight": 1.0}, True),
    ("nuslerp", {"nuslerp_flatten": False, "nuslerp_row_wise": True}, {"weight": 1.0}, False),
    ("model_stock", {}, {}, False),
    ("model_stock", {"filter_wise": True}, {}, True),
    ("sce", {}, {}, False),
    ("ram", {}, {}, True),
    ("ramplus_tl", {}, {}, False),
    ("nearswap", {"t": 0.1}, {}, True),
    ("arcee_fusion", {}, {}, False),
    ("karcher", {}, {}, False),
    ("multislerp", {}, {"weight": 1.0}, False),
])
def test_block_locality(name, shared, models, expected):
    op = get_operator(name)
    n = {"slerp": 1, "nearswap": 1, "arcee_fusion": 1}.get(name, 2)
    p = make_params(name, n, shared, models)
    assert op.block_local(p, 2) is expected
    assert op.block_local(p, 1) is True  # a 1-D tensor is one row, never sliced


def test_selection_counts():
    """Only TIES-style magnitude pruning without rescale can be streamed by its selections: k
    per input, None for an input that keeps everything; None for everything else."""
    ties = get_operator("ties")
    p = make_params("ties", 3, {}, [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 1.0},
                                    {"weight": 1.0, "density": 0.001}])
    assert ties.selection_counts(p, 1000) == [500, None, 1]  # mergekit's k = max(1, int(density·n))
    assert ties.selection_counts(make_params("ties", 2, {}, {"weight": 1.0, "density": 1.0}), 1000) is None
    assert ties.selection_counts(make_params("ties", 2, {"rescale": True}, {"weight": 1.0, "density": 0.5}),
                                 1000) is None
    for name, shared, models in [("breadcrumbs", {}, {"weight": 0.5, "density": 0.9}),
                                 ("dare_ties", {}, {"weight": 0.5, "density": 0.5}), ("sce", {}, {}),
                                 ("task_arithmetic", {}, {"weight": 0.5})]:
        assert get_operator(name).selection_counts(make_params(name, 2, shared, models), 1000) is None


def test_streamed_rescale():
    """DARE and DELLA with rescale, in float32 (exact sums, which add up over rows): per input
    whether it is rescaled; None without rescale, in a narrower dtype, or for other methods."""
    dare = get_operator("dare_ties")
    p = make_params("dare_ties", 2, {}, [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 1.0}])
    assert dare.streamed_rescale(p, torch.float32) == [True, False]
    assert dare.streamed_rescale(p, torch.bfloat16) is None
    assert dare.streamed_rescale(make_params("dare_ties", 2, {"rescale": False}, {"weight": 1.0, "density": 0.5}),
                                 torch.float32) is None
    della = make_params("della", 2, {}, {"weight": 1.0, "density": 0.5, "epsilon": 0.1})
    assert get_operator("della").streamed_rescale(della, torch.float32) == [True, True]
    for name, shared, models in [("ties", {"rescale": True}, {"weight": 0.5, "density": 0.5}),
                                 ("breadcrumbs", {"rescale": True}, {"weight": 0.5, "density": 0.9}),
                                 ("sce", {}, {})]:
        assert get_operator(name).streamed_rescale(make_params(name, 2, shared, models), torch.float32) is None


def test_coefficients():
    ta = get_operator("task_arithmetic")
    p = make_params("task_arithmetic", 2, {"lambda": 2.0}, [{"weight": 0.5}, {"weight": -0.25}])
    assert ta.coefficients(p) == [1.0, -0.5]
    p = make_params("task_arithmetic", 2, {"normalize": True}, [{"weight": 3.0}, {"weight": 1.0}])
    assert ta.coefficients(p) == [0.75, 0.25]
    dl = get_operator("dare_linear")
    assert dl.coefficients(make_params("dare_linear", 2, {}, {"weight": 0.5})) == [0.5, 0.5]
    assert dl.coefficients(make_params("dare_linear", 2, {}, [
        {"weight": 0.5, "density": 0.0}, {"weight": 0.7}])) == [0.0, 0.7]
    sparse = make_params("dare_linear", 2, {}, {"weight": 0.5, "density": 0.9})
    assert dl.coefficients(sparse) is None
    ties = get_operator("ties")
    assert ties.coefficients(make_params("ties", 2, {}, {"weight": 0.5})) is None
    assert ties.coefficients(make_params("ties", 2, {}, [
        {"weight": 0.5}, {"weight": 0.7, "density": 0.0}])) == [1.0, 0.0]
    linear = make_params("linear", 2, {}, {"weight": 0.5})
    assert get_operator("linear").coefficients(linear) is None
    assert get_operator("slerp").coefficients(make_params("slerp", 1, {"t": 0.0})) == [0.0]
    assert get_operator("slerp").coefficients(make_params("slerp", 1, {"t": 0.5})) is None
    assert ties.planning_weights(make_params("ties", 2, {}, [
        {"weight": -0.5, "density": 0.5}, {"weight": 0.7, "density": 0.0}])) == [0.5, 0.0]


def test_multislerp_antipodal_inputs_are_a_clear_error():
    base = torch.zeros(2, 3)
    x = torch.ones(2, 3)
    p = make_params("multislerp", 3, {}, [{"weight": 1.0}, {"weight": 1.0}, {"weight": 2.0}])
    with pytest.raises(MergeHubError, match="weighted mean direction is zero"):
        get_operator("multislerp").merge(base, [x, x, -x], p, make_ctx((2, 3)))
