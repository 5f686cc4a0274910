"""Exporting a parsed config as mergekit YAML: the export loads back to the same config."""

from __future__ import annotations

import yaml
from config_helpers import additive, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine.config import load_config, parse_config, resolve_params, to_mergekit_yaml


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
