"""Parity with mergekit's own planner: every tensor's resolved parameters match what mergekit
resolves, and configs mergekit rejects are rejected (where .venv-mergekit is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from config_helpers import FakeAdditive, error
from config_helpers import fake_operators  # noqa: F401  (fixture, autouse)

from mergehub.engine.config import parse_config, resolve_params
from mergehub.engine.layers import count_layers
from mergehub.engine.operators import registry
from mergehub.engine.operators.base import REQUIRED, Operator, Param, TensorParams


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
