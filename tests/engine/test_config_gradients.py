"""Per-tensor parameter values: gradients across the layers, filter lists, and which layer a
tensor name is in."""

from __future__ import annotations

import pytest
from config_helpers import additive, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine.config import resolve_params
from mergehub.engine.layers import count_layers, layer_index


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
