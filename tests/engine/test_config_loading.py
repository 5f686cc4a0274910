"""Loading a merge config: model paths, the keys and shape of the mapping, and the YAML and
mergekit features it refuses with a one-line error."""

from __future__ import annotations

import textwrap

import pytest
import torch
import yaml
from config_helpers import FakeAdditive, additive, error, parse
from config_helpers import fake_operators, models  # noqa: F401  (fixtures; fake_operators is autouse)

from mergehub.engine import config_yaml
from mergehub.engine.config import load_config, parse_config, to_mergekit_yaml
from mergehub.engine.errors import InvalidCheckpoint


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
    for key in config_yaml.ALLOWED_KEYS:
        assert key in message


def test_mergehub_section_is_metadata_the_engine_reads_past(models):
    """A run exported by the web app carries a ``mergehub:`` section (names, budget, seed), which
    mergekit ignores and so does the engine."""
    config = additive(models, "mergehub: {run: 3, budget: '0.5', checkpoints: {base_model: base}}")
    assert [ref.name for ref in config.models] == ["a", "b"]
    assert "mergehub" not in yaml.safe_load(to_mergekit_yaml(config))


def test_load_yaml_names_the_line_and_can_refuse_aliases():
    assert config_yaml.load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    assert "line 2" in error(config_yaml.load_yaml, "a: &x [1, 2]\nb: *x\n", allow_aliases=False)
    assert error(config_yaml.load_yaml, "a: [1,\n", source="x.yaml").startswith("x.yaml: invalid YAML at line 2")
    assert "duplicate key 'a' at line 2" in error(config_yaml.load_yaml, "a: 1\na: 2\n")


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
