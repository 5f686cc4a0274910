"""The merge configuration layer: parsing, parameter resolution, layer inference, export."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mergehub.engine import config as cfg
from mergehub.engine.config import (
    count_layers,
    layer_index,
    load_config,
    parse_config,
    resolve_params,
    to_mergekit_yaml,
)
from mergehub.engine.errors import ConfigError, InvalidCheckpoint, MergeHubError
from mergehub.engine.operators import registry
from mergehub.engine.operators.base import REQUIRED, Operator, Param, TensorParams

# --------------------------------------------------------------------------------------------
# Fake operators (the config layer only needs their metadata and validate())


class FakeAdditive(Operator):
    name = "fake_additive"
    base = "required"
    params = (
        Param("weight", "model", float, REQUIRED),
        Param("density", "model", float, 1.0, minimum=0.0, maximum=1.0),
        Param("lambda", "global", float, 1.0),
        Param("normalize", "global", bool, False),
        Param("steps", "global", int, 3, minimum=1),
    )

    def validate(self, p: TensorParams, where: str) -> None:
        if p.shared["normalize"] and sum(p.per_model("weight")) == 0:
            raise ConfigError(f"{where}: weights sum to 0, so normalize would divide by 0")


class FakePair(Operator):
    name = "fake_pair"
    base = "required"
    min_inputs = 1
    max_inputs = 1
    params = (Param("t", "global", float, REQUIRED, minimum=0.0, maximum=1.0),)


class FakeAverage(Operator):
    name = "fake_average"
    base = "ignored"
    params = (Param("weight", "model", float, REQUIRED), Param("normalize", "global", bool, True))


class FakeOptional(Operator):
    name = "fake_optional"
    base = "optional"
    min_inputs = 2
    max_inputs = 2
    params = (Param("weight", "model", float, REQUIRED),)


class FakeSingle(Operator):
    name = "fake_single"
    base = "ignored"
    min_inputs = 1
    max_inputs = 1
    params = (Param("scale", "model", float, None),)


class FakeBare(Operator):
    name = "fake_bare"
    base = "required"
    min_inputs = 2
    max_inputs = 4


FAKES = (FakeAdditive, FakePair, FakeAverage, FakeOptional, FakeSingle, FakeBare)


@pytest.fixture(autouse=True)
def fake_operators(monkeypatch):
    """Register the fakes for one test; monkeypatch removes them afterwards."""
    for cls in FAKES:
        monkeypatch.setitem(registry.OPERATORS, cls.name, cls())


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """tmp_path holding empty model directories base, a, b, c (parsing only checks existence)."""
    for name in ("base", "a", "b", "c"):
        (tmp_path / name).mkdir()
    return tmp_path


def parse(models: Path, text: str, **kw):
    return parse_config(yaml.safe_load(textwrap.dedent(text)), base_dir=models, **kw)


def additive(models: Path, extra: str = "", a: str = "{weight: 0.5}", b: str = "{weight: 0.25}"):
    return parse(models, f"""
        merge_method: fake_additive
        base_model: base
        models:
          - model: a
            parameters: {a}
          - model: b
            parameters: {b}
        {extra}
    """)


def error(fn, *args, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Loading and the shape of the config


def test_load_config_resolves_paths_against_the_yaml_directory(models, monkeypatch):
    (models / "configs").mkdir()
    path = models / "configs" / "merge.yaml"
    path.write_text(textwrap.dedent("""
        merge_method: fake_additive
        base_model: ../base
        models:
          - model: ../a
            parameters: {weight: 0.5}
          - model: ../b
            parameters: {weight: 0.25, density: 0.5}
        parameters: {lambda: 2}
        dtype: bfloat16
        out_dtype: float16
    """))
    monkeypatch.chdir(models / "a")  # the cwd must not matter
    config = load_config(path)
    assert config.merge_method == "fake_additive"
    assert isinstance(config.operator, FakeAdditive)
    assert config.base_model.path == (models / "base").resolve()
    assert config.base_model.name == "../base"
    assert [m.path for m in config.models] == [(models / "a").resolve(), (models / "b").resolve()]
    assert [m.name for m in config.models] == ["../a", "../b"]
    assert config.models[1].parameters == {"weight": 0.25, "density": 0.5}
    assert config.parameters == {"lambda": 2.0}
    assert config.dtype is torch.bfloat16 and config.out_dtype is torch.float16
    assert config.raw["models"][0] == {"model": "../a", "parameters": {"weight": 0.5}}


def test_parse_config_resolves_relative_paths_against_cwd_by_default(models, monkeypatch):
    monkeypatch.chdir(models)
    config = parse_config({"merge_method": "fake_additive", "base_model": "base",
                           "models": [{"model": "a", "parameters": {"weight": 1}}]})
    assert config.base_model.path == (models / "base").resolve()
    assert config.models[0].path == (models / "a").resolve()


def test_absolute_paths_are_kept(models):
    config = parse_config({"merge_method": "fake_additive", "base_model": str(models / "base"),
                           "models": [{"model": str(models / "a"),
                                       "parameters": {"weight": 1}}]},
                          base_dir=models / "c")
    assert config.base_model.path == (models / "base").resolve()
    assert config.models[0].name == str(models / "a")


def test_raw_keeps_the_mapping_as_given(models):
    mapping = yaml.safe_load("""
        merge_method: fake_additive
        base_model: base
        models: [{model: a, parameters: {weight: "1e-1", density: [0, 1]}}]
        parameters: {normalize: yes}
    """)
    config = parse_config(mapping, base_dir=models)
    mapping["models"][0]["parameters"]["weight"] = 99
    assert config.raw["models"][0]["parameters"] == {"weight": "1e-1", "density": [0, 1]}
    assert config.raw["parameters"] == {"normalize": True}
    assert config.models[0].parameters["weight"] == pytest.approx(0.1)


def test_dtypes_default_to_none_and_unknown_names_are_errors(models):
    config = additive(models)
    assert config.dtype is None and config.out_dtype is None
    assert "unknown dtype 'int4'" in error(additive, models, "dtype: int4")
    assert "unknown out_dtype 'fp8'" in error(additive, models, "out_dtype: fp8")
    assert additive(models, "dtype: fp32").dtype is torch.float32


def test_missing_model_path_is_an_error_naming_it(models):
    message = error(parse, models, """
        merge_method: fake_additive
        base_model: base
        models: [{model: nowhere/expert, parameters: {weight: 1}}]
    """)
    assert "nowhere/expert" in message and "not found" in message
    message = error(parse, models, """
        merge_method: fake_additive
        base_model: missing_base
        models: [{model: a, parameters: {weight: 1}}]
    """)
    assert "base_model" in message and "missing_base" in message


def test_check_paths_false_skips_existence_checks(models):
    config = parse(models, """
        merge_method: fake_additive
        base_model: org/base-repo
        models: [{model: org/expert, parameters: {weight: 1}}]
    """, check_paths=False)
    assert config.models[0].path == (models / "org" / "expert").resolve()


def test_model_path_must_be_a_directory(models):
    (models / "weights.safetensors").write_bytes(b"")
    message = error(parse, models, """
        merge_method: fake_additive
        base_model: base
        models: [{model: weights.safetensors, parameters: {weight: 1}}]
    """)
    assert "not a directory" in message


@pytest.mark.parametrize("path", ["pytorch_model.bin", "model.pt"])
def test_pickle_paths_are_refused(models, path):
    (models / path).write_bytes(b"")
    for check in (True, False):
        with pytest.raises(InvalidCheckpoint, match="pickle checkpoints are never loaded"):
            parse(models, f"""
                merge_method: fake_additive
                base_model: base
                models: [{{model: {path}, parameters: {{weight: 1}}}}]
            """, check_paths=check)


def test_unknown_top_level_key_is_named_with_the_allowed_keys(models):
    message = error(additive, models, "merge_methods: ties")
    assert "'merge_methods'" in message
    for key in cfg.ALLOWED_KEYS:
        assert key in message


def test_mergehub_section_is_metadata_the_engine_reads_past(models):
    """A run exported by the web app carries a ``mergehub:`` section (names, budget, seed), which
    mergekit ignores and so does the engine."""
    config = additive(models, "mergehub: {run: 3, budget: '0.5', checkpoints: {base_model: base}}")
    assert [ref.name for ref in config.models] == ["a", "b"]
    assert "mergehub" not in yaml.safe_load(to_mergekit_yaml(config))


def test_load_yaml_names_the_line_and_can_refuse_aliases():
    assert cfg.load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    assert "line 2" in error(cfg.load_yaml, "a: &x [1, 2]\nb: *x\n", allow_aliases=False)
    assert error(cfg.load_yaml, "a: [1,\n", source="x.yaml").startswith("x.yaml: invalid YAML at line 2")
    assert "duplicate key 'a' at line 2" in error(cfg.load_yaml, "a: 1\na: 2\n")


@pytest.mark.parametrize("key,value,expected", [
    ("slices", "[]", "slices are not supported yet; list models instead"),
    ("modules", "{}", "modules are not supported yet"),
    ("tokenizer_source", "base", "tokenizer_source is not supported"),
    ("tokenizer", "{source: base}", "tokenizer is not supported"),
    ("chat_template", "chatml", "chat_template is not supported yet"),
])
def test_mergekit_keys_we_cannot_honour_are_clear_errors(models, key, value, expected):
    assert expected in error(additive, models, f"{key}: {value}")


def test_merge_method_missing_or_unknown(models):
    assert "merge_method is missing" in error(
        parse_config, {"models": [{"model": "a"}]}, base_dir=models)
    message = error(parse_config, {"merge_method": "frankenmerge", "models": [{"model": "a"}]},
                    base_dir=models)
    assert "frankenmerge" in message and "fake_additive" in message


@pytest.mark.parametrize("mapping", [None, [], "merge_method: ties"])
def test_config_must_be_a_mapping(mapping):
    assert "must be a mapping" in error(parse_config, mapping)


@pytest.mark.parametrize("models_yaml,expected", [
    ("", "models is missing or empty"),
    ("models: []", "models is missing or empty"),
    ("models: a", "models is missing or empty"),
    ("models: [a]", "models[0]: write each model as a mapping"),
    ("models: [{parameters: {weight: 1}}]", "models[0]: write each model as a mapping"),
    ("models: [{model: a, weight: 1}]", "unknown key 'weight'"),
    ("models: [{model: 3}]", "must be a path to a local model directory"),
    ("models: [{model: ''}]", "must be a path to a local model directory"),
    ("models: [{model: a, parameters: [1]}]", "parameters must be a mapping"),
])
def test_malformed_models(models, models_yaml, expected):
    text = f"merge_method: fake_additive\nbase_model: base\n{models_yaml}\n"
    assert expected in error(parse_config, yaml.safe_load(text), base_dir=models)


def test_the_same_model_twice_is_an_error(models):
    message = error(parse, models, """
        merge_method: fake_additive
        base_model: base
        models:
          - model: a
            parameters: {weight: 1}
          - model: ./b/../a
            parameters: {weight: 2}
    """)
    assert "models[1]" in message and "same model as models[0]" in message


def test_yaml_problems_are_one_line_config_errors(tmp_path):
    assert "not found" in error(load_config, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: ties\nmodels: [a\n")
    assert "invalid YAML at line" in error(load_config, bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("merge_method: ties\nparameters: {}\nmodels: []\nparameters: {}\n")
    assert "duplicate key 'parameters' at line 4" in error(load_config, dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "must be a mapping" in error(load_config, empty)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("merge_method: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in error(load_config, unsafe)


# --------------------------------------------------------------------------------------------
# Parameter names, scopes, values


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


# --------------------------------------------------------------------------------------------
# Gradients and filters


def weights_along(config, template: str, num_layers: int, model: int = 0) -> list[float]:
    return [resolve_params(config, template.format(i), num_layers).models[model]["weight"]
            for i in range(num_layers)]


def test_two_anchor_gradient_is_linear_in_the_layer(models):
    config = additive(models, a="{weight: [0, 1]}")
    got = weights_along(config, "model.layers.{}.mlp.up_proj.weight", 5)
    assert got == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_gradient_interpolates_between_evenly_spaced_anchors(models):
    config = additive(models, a="{weight: [0, 1, 0.5]}")
    # 9 layers: t = i/8; anchors at t = 0, 0.5, 1
    got = weights_along(config, "transformer.h.{}.attn.c_attn.weight", 9)
    assert got == pytest.approx([0, 0.25, 0.5, 0.75, 1, 0.875, 0.75, 0.625, 0.5])


def test_gradient_with_more_anchors_than_layers(models):
    config = additive(models, a="{weight: [0, 10, 20, 30, 40]}")
    # 3 layers: t = 0, 0.5, 1 -> s = 0, 2, 4
    assert weights_along(config, "model.layers.{}.x", 3) == pytest.approx([0, 20, 40])


def test_tensors_outside_layers_use_t_zero(models):
    config = additive(models, a="{weight: [0.2, 0.8]}")
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert resolve_params(config, name, 4).models[0]["weight"] == pytest.approx(0.2)


def test_one_element_list_is_a_constant(models):
    config = additive(models, a="{weight: [0.7]}")
    assert weights_along(config, "model.layers.{}.x", 4) == pytest.approx([0.7] * 4)
    assert resolve_params(config, "lm_head.weight", 4).models[0]["weight"] == pytest.approx(0.7)


def test_single_layer_model_reads_gradients_at_t_one(models):
    # mergekit: a slice of one layer uses t = 1
    config = additive(models, a="{weight: [0.1, 0.9]}")
    assert resolve_params(config, "model.layers.0.x", 1).models[0]["weight"] == pytest.approx(0.9)


def test_boolean_gradient_picks_without_interpolating(models):
    config = additive(models, "parameters: {normalize: [false, true]}", a="{weight: 1}")
    got = [resolve_params(config, f"model.layers.{i}.x", 5).shared["normalize"]
           for i in range(5)]
    assert got == [False, False, False, False, True]  # index ⌊t·(n−1)⌋


def test_empty_list_falls_back_to_the_next_scope(models):
    config = additive(models, "parameters: {density: 0.4}", a="{weight: 1, density: []}")
    assert resolve_params(config, "model.layers.0.x", 2).models[0]["density"] == 0.4


def test_layer_beyond_num_layers_is_a_caller_bug(models):
    with pytest.raises(ValueError, match="layer 4 but the model has 4 layers"):
        resolve_params(additive(models), "model.layers.4.x", 4)


def test_first_matching_filter_wins(models):
    config = additive(models, a="{weight: [{filter: self_attn, value: 0.1}, "
                                "{filter: attn, value: 0.2}, {filter: mlp, value: 0.3}, "
                                "{value: 0.4}]}")
    get = lambda name: resolve_params(config, name, 2).models[0]["weight"]  # noqa: E731
    assert get("model.layers.1.self_attn.q_proj.weight") == 0.1
    assert get("transformer.h.1.attn.c_attn.weight") == 0.2
    assert get("model.layers.0.mlp.down_proj.weight") == 0.3
    assert get("model.norm.weight") == 0.4


@pytest.mark.parametrize("catch_all", ["{value: 9}", "{filter: null, value: 9}",
                                       "{filter: '*', value: 9}"])
def test_null_and_star_filters_match_everything(models, catch_all):
    config = additive(models, a=f"{{weight: [{{filter: mlp, value: 1}}, {catch_all}]}}")
    assert resolve_params(config, "lm_head.weight", 2).models[0]["weight"] == 9.0
    assert resolve_params(config, "model.layers.0.mlp.w", 2).models[0]["weight"] == 1.0


def test_star_is_not_a_wildcard_inside_a_filter(models):
    config = additive(models, "parameters: {weight: 5}",
                      a="{weight: [{filter: 'layers.*.mlp', value: 1}]}")
    assert resolve_params(config, "model.layers.0.mlp.w", 2).models[0]["weight"] == 5.0


def test_a_single_filter_mapping_is_accepted(models):
    config = additive(models, "parameters: {weight: 3}", a="{weight: {filter: mlp, value: 1}}")
    assert config.models[0].parameters["weight"] == [{"filter": "mlp", "value": 1.0}]
    assert resolve_params(config, "model.layers.0.mlp.w", 2).models[0]["weight"] == 1.0
    assert resolve_params(config, "model.layers.0.attn.w", 2).models[0]["weight"] == 3.0


def test_unmatched_filters_fall_back_model_then_global_then_default(models):
    config = additive(models, """
        parameters:
          density: [{filter: mlp, value: 0.5}]
          weight: 2
    """, a="{weight: [{filter: attn, value: 1}], density: [{filter: up_proj, value: 0.1}]}")
    p = lambda name: resolve_params(config, name, 2).models[0]  # noqa: E731
    assert p("model.layers.0.self_attn.q_proj.weight") == {"weight": 1.0, "density": 1.0}
    assert p("model.layers.0.mlp.up_proj.weight") == {"weight": 2.0, "density": 0.1}
    assert p("model.layers.0.mlp.down_proj.weight") == {"weight": 2.0, "density": 0.5}


def test_filter_value_may_be_a_gradient(models):
    config = additive(models, a="{weight: [{filter: mlp, value: [0, 1]}, {value: [1, 0]}]}")
    assert weights_along(config, "model.layers.{}.mlp.up_proj.weight", 3) == \
        pytest.approx([0, 0.5, 1])
    assert weights_along(config, "model.layers.{}.self_attn.o_proj.weight", 3) == \
        pytest.approx([1, 0.5, 0])


def test_mergekit_slerp_style_config(models):
    config = parse(models, """
        merge_method: fake_pair
        base_model: base
        models: [{model: base}, {model: a}]
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
    """)
    t = lambda name: resolve_params(config, name, 9).shared["t"]  # noqa: E731
    assert [t(f"model.layers.{i}.self_attn.v_proj.weight") for i in range(0, 9, 2)] == \
        pytest.approx([0, 0.5, 0.3, 0.7, 1])
    assert t("model.layers.1.mlp.gate_proj.weight") == pytest.approx(0.75)
    assert t("model.layers.3.input_layernorm.weight") == 0.5


# --------------------------------------------------------------------------------------------
# The base model and input counts


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


# --------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("name,index", [
    ("model.layers.12.mlp.up_proj.weight", 12),
    ("model.layers.0.self_attn.q_proj.weight", 0),
    ("transformer.h.3.attn.c_attn.weight", 3),
    ("model.decoder.layers.7.fc1.weight", 7),
    ("blocks.5.attn.qkv.weight", 5),
    ("transformer.blocks.31.ffn.up_proj.weight", 31),
    ("gpt_neox.layers.2.attention.dense.weight", 2),
    ("encoder.block.2.layer.1.DenseReluDense.wi.weight", 2),
    ("model.layers.3.block_sparse_moe.experts.7.w1.weight", 3),
    ("model.language_model.layers.10.mlp.down_proj.weight", 10),
    ("layers.4.attention.wq.weight", 4),
    ("model.embed_tokens.weight", None),
    ("model.norm.weight", None),
    ("lm_head.weight", None),
    ("transformer.wte.weight", None),
    ("transformer.ln_f.bias", None),
    ("model.layers_norm.weight", None),
    ("model.hidden.3.weight", None),
])
def test_layer_index(name, index):
    assert layer_index(name) == index


def test_count_layers():
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.11.mlp.w",
             "model.layers.3.mlp.w", "model.norm.weight", "lm_head.weight"]
    assert count_layers(names) == 12
    assert count_layers(iter(names)) == 12
    assert count_layers(["lm_head.weight", "model.norm.weight"]) == 0
    assert count_layers([]) == 0


# --------------------------------------------------------------------------------------------
# Export


def assert_same_config(a, b):
    assert a.merge_method == b.merge_method
    assert type(a.operator) is type(b.operator)
    assert (a.base_model and (a.base_model.path, a.base_model.parameters)) == \
        (b.base_model and (b.base_model.path, b.base_model.parameters))
    assert [(m.path, m.parameters) for m in a.models] == [(m.path, m.parameters) for m in b.models]
    assert a.parameters == b.parameters
    assert (a.dtype, a.out_dtype) == (b.dtype, b.out_dtype)


def test_export_round_trips_through_load(models, tmp_path_factory):
    config = parse(models, """
        merge_method: fake_additive
        base_model: base
        models:
          - model: base
            parameters: {weight: 9}
          - model: a
            parameters:
              weight: [0, 0.5, 1]
              density: [{filter: mlp, value: [0.2, 0.4]}, {filter: '*', value: 0.9}]
          - model: b
            parameters: {weight: {filter: attn, value: 1e-1}}
        parameters: {lambda: 1.5, normalize: 1, steps: 4, weight: 0.5}
        dtype: bf16
        out_dtype: float16
    """)
    text = to_mergekit_yaml(config)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "exported.yaml"
    elsewhere.write_text(text)
    again = load_config(elsewhere)
    assert_same_config(config, again)
    assert "weight: [0.0, 0.5, 1.0]" in text  # gradients inline, as mergekit writes them
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.2.self_attn.o_proj.weight",
                 "lm_head.weight"):
        assert resolve_params(config, name, 3) == resolve_params(again, name, 3)
    assert yaml.safe_load(text)["dtype"] == "bfloat16"


def test_export_of_an_ignored_base_lists_it_as_a_model(models):
    config = parse(models, """
        merge_method: fake_average
        base_model: base
        models: [{model: a, parameters: {weight: 1}}]
        parameters: {weight: 0.5, normalize: false}
    """)
    exported = yaml.safe_load(to_mergekit_yaml(config))
    assert "base_model" not in exported
    assert [m["model"] for m in exported["models"]] == [str((models / p).resolve())
                                                        for p in ("a", "base")]
    assert_same_config(config, parse_config(exported))


def test_export_is_valid_mergekit_shape(models):
    exported = yaml.safe_load(to_mergekit_yaml(additive(models)))
    assert list(exported) == ["merge_method", "base_model", "models"]
    assert exported["models"][0] == {"model": str((models / "a").resolve()),
                                     "parameters": {"weight": 0.5}}


# --------------------------------------------------------------------------------------------
# Real operators


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


# --------------------------------------------------------------------------------------------
# Parity with mergekit's own planner (where .venv-mergekit is installed)

MERGEKIT_PYTHON = Path(__file__).resolve().parents[2] / ".venv-mergekit" / "bin" / "python"

# Per-tensor parameters as mergekit's MergePlanner resolves them, printed as JSON.
MERGEKIT_SCRIPT = r"""
import json, os, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions
from mergekit.architecture import get_architecture_info
from mergekit.io.tasks import LoaderCache
from mergekit.plan import MergePlanner
from mergekit.merge import _model_out_config
result = {}
for path in sys.argv[1:]:
    os.chdir(os.path.dirname(path))  # model paths are relative to the config
    try:
        config = MergeConfiguration.model_validate(yaml.safe_load(open(path)))
        options = MergeOptions()
        arch = get_architecture_info(config, options)
        LoaderCache().setup(options=options)
        planner = MergePlanner(config, arch, options, _model_out_config(config, arch, False))
        planner._plan()
        result[path] = {w.name: {"shared": dict(task.parameters),
                                 "inputs": {ref.model.path: dict(v)
                                            for ref, v in task.input_parameters.items()}}
                        for w, task in planner._tensors}
    except Exception as exc:
        result[path] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(result))
"""


class MkTies(FakeAdditive):
    """The parameters of mergekit's ties, as its registry declares them."""

    name = "mk_ties"
    params = (Param("int8_mask", "global", bool, False), Param("normalize", "global", bool, True),
              Param("rescale", "global", bool, False), Param("lambda", "global", float, 1.0),
              Param("weight", "model", float, REQUIRED), Param("density", "model", float, 1.0))

    def validate(self, p: TensorParams, where: str) -> None:
        pass


class MkLinear(Operator):
    name = "mk_linear"
    base = "ignored"
    params = (Param("weight", "model", float, REQUIRED), Param("normalize", "global", bool, True))


class MkSlerp(Operator):
    name = "mk_slerp"
    base = "required"
    min_inputs = max_inputs = 1
    params = (Param("t", "global", float, REQUIRED),)


# key: (mergekit method, our stand-in, model family, body, None or (mergekit's error, ours))
PARITY_CONFIGS = {
    "ties": ("ties", "mk_ties", "llama3", """
        base_model: base
        models:
          - model: a
            parameters:
              weight: [0, 0.3, 1]
              density: [{filter: mlp, value: [0.2, 0.9]}, {filter: self_attn, value: '5e-1'}]
          - model: base
            parameters: {weight: 7}
          - model: b
            parameters: {weight: {filter: up_proj, value: 0.4}}
        parameters:
          weight: [{filter: norm, value: 0.25}, {value: [1, 0.5]}]
          density: 0.7
          lambda: [1, 2, 0.5, 3]
          normalize: [true, false]
          int8_mask: 1.0
    """, None),
    "linear": ("linear", "mk_linear", "llama3", """
        base_model: base
        models:
          - model: a
            parameters: {weight: [{filter: lm_head, value: 2}]}
          - model: b
            parameters: {weight: [0.1, 0.9]}
        parameters: {weight: [0.5, 1.5], normalize: false}
    """, None),
    "slerp": ("slerp", "mk_slerp", "llama5", """
        base_model: base
        models: [{model: base}, {model: a}]
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
    """, None),
    "single_layer": ("ties", "mk_ties", "llama1", """
        base_model: base
        models: [{model: a, parameters: {weight: [0.1, 0.9], density: [1, 0.5]}}]
        parameters: {lambda: [2, 4]}
    """, None),
    # the appended base of a linear merge needs a weight in mergekit too
    "linear_unweighted_base": ("linear", "mk_linear", "llama3", """
        base_model: base
        models: [{model: a, parameters: {weight: 0.5}}]
    """, ("Missing required parameter weight", "one more input")),
}


def write_tiny_llama(root: Path, layers: int, hidden: int = 4, vocab: int = 8) -> None:
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": 1, "num_key_value_heads": 1, "vocab_size": vocab,
        "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "torch_dtype": "float32"}))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{i}.self_attn.{part}.weight"] = (hidden, hidden)
        for part in ("gate_proj", "up_proj"):
            shapes[f"model.layers.{i}.mlp.{part}.weight"] = (2 * hidden, hidden)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, 2 * hidden)
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (hidden,)
        shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (hidden,)
    save_file({n: torch.zeros(s) for n, s in shapes.items()}, str(root / "model.safetensors"))


@pytest.fixture(scope="module")
def mergekit_resolution(tmp_path_factory):
    """Run mergekit's planner once over every parity config (one subprocess, a few seconds)."""
    if not MERGEKIT_PYTHON.exists():
        pytest.skip("mergekit reference venv (.venv-mergekit) is not installed")
    root = tmp_path_factory.mktemp("mergekit_parity")
    paths = []
    for key, (method, _, family, body, _) in PARITY_CONFIGS.items():
        family_dir = root / family
        if not family_dir.exists():
            for name in ("base", "a", "b"):
                write_tiny_llama(family_dir / name, layers=int(family.removeprefix("llama")))
        path = family_dir / f"{key}.yaml"
        path.write_text(f"merge_method: {method}\n" + textwrap.dedent(body))
        paths.append(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO"))}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([str(MERGEKIT_PYTHON), "-c", MERGEKIT_SCRIPT, *map(str, paths)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {Path(p).stem: (Path(p), r) for p, r in json.loads(proc.stdout).items()}


def parse_with(monkeypatch, key: str, path: Path, operators: str):
    """Parse a parity config with our real operator or with a stand-in that declares
    mergekit's parameters (which tests this layer alone)."""
    mapping = yaml.safe_load(path.read_text())
    if operators == "stand_in":
        for cls in (MkTies, MkLinear, MkSlerp):
            monkeypatch.setitem(registry.OPERATORS, cls.name, cls())
        mapping["merge_method"] = PARITY_CONFIGS[key][1]
    return mapping, lambda: parse_config(mapping, base_dir=path.parent)


@pytest.mark.slow
@pytest.mark.parametrize("operators", ["stand_in", "real"])
@pytest.mark.parametrize("key", [k for k, v in PARITY_CONFIGS.items() if v[4] is None])
def test_parameters_match_mergekit_for_every_tensor(mergekit_resolution, monkeypatch, key,
                                                    operators):
    path, expected = mergekit_resolution[key]
    assert "error" not in expected, expected
    mapping, parse_it = parse_with(monkeypatch, key, path, operators)
    config = parse_it()
    num_layers = count_layers(expected)
    assert num_layers == int(PARITY_CONFIGS[key][2].removeprefix("llama"))
    base_name = None if config.base_model is None else config.base_model.name
    for tensor, want in expected.items():
        got = resolve_params(config, tensor, num_layers)
        assert got.shared == want["shared"], tensor
        # mergekit lists the base among its inputs, with no non-base parameters
        inputs = {k: v for k, v in want["inputs"].items() if k != base_name}
        assert [m.name for m in config.models] == _in_config_order(inputs, mapping), tensor
        for ref, params in zip(config.models, got.models):
            assert params == pytest.approx(inputs[ref.name], rel=1e-12), (tensor, ref.name)
        if base_name is not None:
            assert want["inputs"][base_name] == {}


def _in_config_order(inputs: dict, mapping: dict) -> list[str]:
    order = [m["model"] for m in mapping["models"]]
    if mapping.get("base_model") not in order:
        order.append(mapping["base_model"])
    return [name for name in order if name in inputs]


@pytest.mark.slow
@pytest.mark.parametrize("operators", ["stand_in", "real"])
@pytest.mark.parametrize("key", [k for k, v in PARITY_CONFIGS.items() if v[4] is not None])
def test_configs_mergekit_rejects_are_rejected(mergekit_resolution, monkeypatch, key, operators):
    path, expected = mergekit_resolution[key]
    theirs, ours = PARITY_CONFIGS[key][4]
    assert theirs in expected.get("error", "")
    _, parse_it = parse_with(monkeypatch, key, path, operators)
    assert ours in error(parse_it)
