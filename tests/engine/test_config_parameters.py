"""Method parameters in a merge config: names, model and global scopes, defaults, typed
values, required parameters and the operator's own validation."""

from __future__ import annotations

import pytest
from config_helpers import additive, error, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine.config import resolve_params


def test_unknown_parameter_lists_the_methods_parameters(models):
    message = error(additive, models, "parameters: {wieght: 1}")
    assert "unknown parameter 'wieght' for fake_additive" in message
    assert "weight, density" in message and "lambda, normalize, steps" in message
    message = error(additive, models, a="{weight: 1, gamma: 0.1}")
    assert "models[0] (a)" in message and "'gamma'" in message


def test_method_without_parameters_says_so(models):
    message = error(parse, models, """
        merge_method: fake_bare
        base_model: base
        models: [{model: a}, {model: b}]
        parameters: {t: 0.5}
    """)
    assert "takes no parameters" in message


def test_global_parameter_given_per_model_is_an_error(models):
    message = error(additive, models, a="{weight: 1, lambda: 2}")
    assert "lambda is a global parameter of fake_additive" in message and "models[0]" in message


def test_per_model_parameter_given_globally_applies_to_all_models(models):
    config = parse(models, """
        merge_method: fake_additive
        base_model: base
        models: [{model: a}, {model: b, parameters: {density: 0.5}}]
        parameters: {weight: 0.3, density: 0.9}
    """)
    p = resolve_params(config, "model.layers.0.mlp.up_proj.weight", 2)
    assert p.per_model("weight") == [0.3, 0.3]
    assert p.per_model("density") == [0.9, 0.5]  # model > global


def test_defaults_are_filled_and_values_typed(models):
    config = additive(models, a="{weight: 1}")
    p = resolve_params(config, "model.embed_tokens.weight", 4)
    assert p.shared == {"lambda": 1.0, "normalize": False, "steps": 3}
    assert p.models == [{"weight": 1.0, "density": 1.0}, {"weight": 0.25, "density": 1.0}]
    assert isinstance(p.models[0]["weight"], float)
    config = additive(models, "parameters: {steps: 5.0, lambda: 2}")
    p = resolve_params(config, "lm_head.weight", 4)
    assert p.shared["steps"] == 5 and isinstance(p.shared["steps"], int)
    assert p.shared["lambda"] == 2.0 and isinstance(p.shared["lambda"], float)


def test_optional_parameter_defaults_to_none(models):
    config = parse(models, "merge_method: fake_single\nmodels: [{model: a}]")
    assert resolve_params(config, "lm_head.weight", 1).models == [{"scale": None}]
    config = parse(models, "merge_method: fake_single\nmodels: [{model: a, parameters: "
                           "{scale: [{filter: lm_head, value: 2}]}}]")
    assert resolve_params(config, "lm_head.weight", 1).models == [{"scale": 2.0}]
    assert resolve_params(config, "model.norm.weight", 1).models == [{"scale": None}]


@pytest.mark.parametrize("text,value", [
    ("'1e-3'", 0.001),        # YAML 1.1 reads 1e-3 as a string; mergekit takes it as a number
    ("1.0e-3", 0.001),
    ("' 0.5 '", 0.5),
    ("1", 1.0),
])
def test_numeric_strings_become_numbers(models, text, value):
    config = additive(models, a=f"{{weight: {text}}}")
    assert config.models[0].parameters["weight"] == pytest.approx(value)


@pytest.mark.parametrize("text,value", [
    ("true", True), ("false", False), ("1.0", True), ("0", False), ("'yes'", True),
    ("'off'", False), ("'True'", True), ("on", True),
])
def test_boolean_spellings_mergekit_accepts(models, text, value):
    config = additive(models, f"parameters: {{normalize: {text}}}")
    assert config.parameters["normalize"] is value


@pytest.mark.parametrize("params,expected", [
    ("{weight: abc}", "models[0] (a): weight: weight must be a number, got 'abc'"),
    ("{weight: 1, density: 1.5}", "density must be ≤ 1.0, got 1.5"),
    ("{weight: 1, density: -0.1}", "density must be ≥ 0.0"),
    ("{weight: .nan}", "weight must be a finite number"),
    ("{weight: .inf}", "weight must be a finite number"),
    ("{weight: null}", "weight: has no value"),
    ("{weight: true}", "weight must be a number"),
    ("{weight: [0, abc]}", "weight must be a number, got 'abc'"),
    ("{weight: [0, [1]]}", "only numbers (a gradient) or only {filter, value} entries"),
    ("{weight: [{filter: mlp, value: 1}, 2]}", "got a mix"),
    ("{weight: {filter: mlp}}", "filter entry without a value"),
    ("{weight: [{filter: mlp, valeu: 1}]}", "unknown key 'valeu'"),
    ("{weight: [{filter: 3, value: 1}]}", "filter must be a substring"),
    ("{weight: [{filter: mlp, value: [0, 1.5]}], density: [0, 2]}", "density must be ≤ 1.0"),
])
def test_bad_parameter_values(models, params, expected):
    assert expected in error(additive, models, a=params)


@pytest.mark.parametrize("text,expected", [
    ("parameters: {steps: 2.5}", "steps must be a whole number"),
    ("parameters: {steps: 0}", "steps must be ≥ 1"),
    ("parameters: {normalize: 2}", "normalize must be true or false"),
    ("parameters: {normalize: maybe}", "normalize must be true or false"),
    ("parameters: [1]", "parameters must be a mapping"),
])
def test_bad_global_values(models, text, expected):
    assert expected in error(additive, models, text)


def test_int_gradient_that_lands_between_integers_is_an_error_at_resolve(models):
    config = additive(models, "parameters: {steps: [1, 2]}")
    assert resolve_params(config, "model.layers.0.x", 3).shared["steps"] == 1
    assert resolve_params(config, "model.layers.2.x", 3).shared["steps"] == 2
    message = error(resolve_params, config, "model.layers.1.x", 3)
    assert "steps must be a whole number, got 1.5" in message and "model.layers.1.x" in message


def test_required_per_model_parameter_missing_names_model_and_parameter(models):
    message = error(additive, models, b="{density: 0.5}")
    assert "model b" in message and "needs weight" in message


def test_required_global_parameter_missing(models):
    message = error(parse, models, """
        merge_method: fake_pair
        base_model: base
        models: [{model: a}]
    """)
    assert "fake_pair needs parameter t" in message


def test_required_parameter_that_no_filter_gives_is_an_error_for_that_tensor(models):
    config = additive(models, a="{weight: [{filter: mlp, value: 1}]}")
    assert resolve_params(config, "model.layers.0.mlp.up_proj.weight", 2).per_model("weight") \
        == [1.0, 0.25]
    message = error(resolve_params, config, "model.layers.0.self_attn.q_proj.weight", 2)
    assert "model a" in message and "weight" in message
    assert "model.layers.0.self_attn.q_proj.weight" in message


def test_operator_validate_sees_the_resolved_values(models):
    config = additive(models, "parameters: {normalize: true}", a="{weight: [1, 2]}",
                      b="{weight: [-1, 1]}")
    message = error(resolve_params, config, "model.layers.0.x", 2)
    assert message.startswith("tensor model.layers.0.x: weights sum to 0")
    assert resolve_params(config, "model.layers.1.x", 2).per_model("weight") == [2.0, 1.0]
