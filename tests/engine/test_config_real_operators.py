"""The config layer with the real operators' parameters (ties, task arithmetic, linear, slerp)."""

from __future__ import annotations

import pytest
from config_helpers import error, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine.config import resolve_params
from mergehub.engine.operators import registry


def test_real_ties(models):
    assert registry.get_operator("ties").name == "ties"
    config = parse(models, """
        merge_method: ties
        base_model: base
        models:
          - model: base
          - model: a
            parameters: {weight: 0.5, density: [0.2, 0.8]}
          - model: b
            parameters: {weight: 0.5}
        parameters: {density: 0.5, int8_mask: true}
    """)
    assert [m.name for m in config.models] == ["a", "b"]
    p = resolve_params(config, "model.layers.1.mlp.up_proj.weight", 3)
    assert p.shared["normalize"] is True and p.shared["lambda"] == 1.0
    assert p.per_model("weight") == [0.5, 0.5]
    assert p.per_model("density") == pytest.approx([0.5, 0.5])
    assert "ties needs a base_model" in error(parse, models, """
        merge_method: ties
        models: [{model: a, parameters: {weight: 1}}]
    """)
    assert "needs weight" in error(parse, models, """
        merge_method: ties
        base_model: base
        models: [{model: a, parameters: {density: 0.5}}]
    """)


def test_real_task_arithmetic(models):
    assert registry.get_operator("task_arithmetic").name == "task_arithmetic"
    config = parse(models, """
        merge_method: task_arithmetic
        base_model: base
        models: [{model: a, parameters: {weight: 1.0}}, {model: b, parameters: {weight: -0.5}}]
        parameters: {lambda: 0.8}
    """)
    p = resolve_params(config, "model.embed_tokens.weight", 2)
    assert p.shared["normalize"] is False and p.shared["lambda"] == pytest.approx(0.8)
    assert p.per_model("weight") == [1.0, -0.5]
    assert "unknown parameter 't' for task_arithmetic" in error(parse, models, """
        merge_method: task_arithmetic
        base_model: base
        models: [{model: a, parameters: {weight: 1.0}}]
        parameters: {t: 0.5}
    """)


def test_real_linear_treats_the_base_as_one_more_input(models):
    assert registry.get_operator("linear").name == "linear"
    config = parse(models, """
        merge_method: linear
        base_model: base
        models: [{model: a, parameters: {weight: 0.7}}]
        parameters: {weight: 0.3}
    """)
    assert config.base_model is None
    assert [m.name for m in config.models] == ["a", "base"]
    p = resolve_params(config, "lm_head.weight", 1)
    assert p.per_model("weight") == pytest.approx([0.7, 0.3]) and p.shared["normalize"] is True
    assert "one more input" in error(parse, models, """
        merge_method: linear
        base_model: base
        models: [{model: a, parameters: {weight: 0.7}}]
    """)


def test_real_slerp(models):
    assert registry.get_operator("slerp").name == "slerp"
    config = parse(models, """
        merge_method: slerp
        base_model: base
        models: [{model: base}, {model: a}]
        parameters: {t: [0, 1]}
    """)
    assert resolve_params(config, "model.layers.1.mlp.up_proj.weight", 3).shared["t"] == 0.5
    assert "slerp needs parameter t" in error(parse, models, """
        merge_method: slerp
        base_model: base
        models: [{model: a}]
    """)
    assert "slerp takes exactly 1 model besides the base_model; got 2" in error(parse, models, """
        merge_method: slerp
        base_model: base
        models: [{model: a}, {model: b}]
        parameters: {t: 0.5}
    """)
    assert "t is a global parameter of slerp" in error(parse, models, """
        merge_method: slerp
        base_model: base
        models: [{model: a, parameters: {t: 0.5}}]
    """)
