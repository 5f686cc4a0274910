"""The base model of a merge config (required, ignored or optional by method) and the number
of models each method takes."""

from __future__ import annotations

import pytest
from config_helpers import error, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine.config import parse_config, resolve_params
from mergehub.engine.errors import ConfigError, MergeHubError


def test_required_base_missing_is_an_error(models):
    message = error(parse, models, "merge_method: fake_additive\nmodels: "
                                   "[{model: a, parameters: {weight: 1}}]")
    assert "fake_additive needs a base_model" in message


def test_base_listed_under_models_is_not_a_separate_input(models):
    config = parse(models, """
        merge_method: fake_additive
        base_model: base
        models:
          - model: a
            parameters: {weight: 0.5}
          - model: ./base
            parameters: {weight: 7, density: 0.5}
          - model: b
            parameters: {weight: 0.25}
    """)
    assert [m.name for m in config.models] == ["a", "b"]
    assert config.base_model.name == "base"
    # kept for the record, unused: mergekit resolves no non-base parameters for the base
    assert config.base_model.parameters == {"weight": 7.0, "density": 0.5}
    assert resolve_params(config, "lm_head.weight", 2).per_model("weight") == [0.5, 0.25]


def test_base_listed_without_parameters_needs_none(models):
    config = parse(models, """
        merge_method: fake_additive
        base_model: base
        models: [{model: base}, {model: a, parameters: {weight: 1}}]
    """)
    assert [m.name for m in config.models] == ["a"]
    assert config.base_model.parameters == {}


def test_ignored_base_is_one_more_input_appended_after_the_models(models):
    config = parse(models, """
        merge_method: fake_average
        base_model: base
        models:
          - model: a
            parameters: {weight: 2}
          - model: b
        parameters: {weight: 0.5}
    """)
    assert config.base_model is None
    assert [m.name for m in config.models] == ["a", "b", "base"]
    assert resolve_params(config, "lm_head.weight", 1).per_model("weight") == [2.0, 0.5, 0.5]


def test_ignored_base_listed_under_models_is_not_added_twice(models):
    config = parse(models, """
        merge_method: fake_average
        base_model: base
        models:
          - model: a
            parameters: {weight: 2}
          - model: base
            parameters: {weight: 3}
    """)
    assert config.base_model is None
    assert [m.name for m in config.models] == ["a", "base"]
    assert resolve_params(config, "lm_head.weight", 1).per_model("weight") == [2.0, 3.0]


def test_ignored_base_needs_its_required_parameters(models):
    message = error(parse, models, """
        merge_method: fake_average
        base_model: base
        models: [{model: a, parameters: {weight: 2}}]
    """)
    assert "treats base_model base as one more input" in message and "weight" in message


def test_optional_base(models):
    without = parse(models, "merge_method: fake_optional\nparameters: {weight: 1}\n"
                            "models: [{model: a}, {model: b}]")
    assert without.base_model is None and len(without.models) == 2
    with_base = parse(models, "merge_method: fake_optional\nparameters: {weight: 1}\n"
                              "base_model: base\nmodels: [{model: base}, {model: a}, {model: b}]")
    assert with_base.base_model.name == "base"
    assert [m.name for m in with_base.models] == ["a", "b"]


@pytest.mark.parametrize("method,base,names,expected", [
    ("fake_pair", "base", ["a", "b"],
     "fake_pair takes exactly 1 model besides the base_model; got 2"),
    ("fake_pair", "base", ["base"], "fake_pair takes exactly 1 model besides the base_model; got 0"),
    ("fake_bare", "base", ["a"], "fake_bare takes at least 2 models besides the base_model; got 1"),
    ("fake_bare", "base", ["a", "b", "c", "base"], None),
    ("fake_optional", None, ["a"], "fake_optional takes exactly 2 models; got 1"),
    ("fake_optional", "base", ["a", "b", "c"],
     "fake_optional takes exactly 2 models besides the base_model; got 3"),
    ("fake_single", None, ["a", "b"], "fake_single takes exactly 1 model; got 2"),
    ("fake_single", "base", ["a"],
     "fake_single takes exactly 1 model (the base_model counts as one of them); got 2"),
    ("fake_single", "base", ["base"], None),
])
def test_input_counts(models, method, base, names, expected):
    mapping = {"merge_method": method, "models": [{"model": n} for n in names]}
    if base:
        mapping["base_model"] = base
    if method in ("fake_pair",):
        mapping["parameters"] = {"t": 0.5}
    if method == "fake_optional":
        mapping["parameters"] = {"weight": 1}
    if expected is None:
        parse_config(mapping, base_dir=models)
    else:
        assert error(parse_config, mapping, base_dir=models) == expected


def test_fake_bare_counts_more_than_max(models):
    (models / "d").mkdir()
    (models / "e").mkdir()
    mapping = {"merge_method": "fake_bare", "base_model": "base",
               "models": [{"model": n} for n in "abcde"]}
    assert error(parse_config, mapping, base_dir=models) == \
        "fake_bare takes at most 4 models besides the base_model; got 5"


def test_config_errors_are_mergehub_errors():
    assert issubclass(ConfigError, MergeHubError)
