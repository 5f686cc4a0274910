"""mergekit-style merge configs: parse and check the YAML, resolve parameters per tensor, export.

A config names a ``merge_method``, an optional ``base_model``, the ``models`` to merge (each with
its own ``parameters``), global ``parameters``, and optional ``dtype`` / ``out_dtype``.

A parameter *setting* is one of (mergekit 0.1.5 semantics):

* a scalar;
* a gradient, a list of n numbers read at t ∈ [0, 1] between evenly spaced anchors:
  s = t·(n − 1), i = ⌊s⌋, f = s − i, value = (1 − f)·v[i] + f·v[min(i + 1, n − 1)]
  (a list of booleans picks v[⌊s⌋]; an empty list is no setting);
* a filter list ``[{filter: SUBSTRING, value: V}, ...]`` (a single such mapping is a list of one):
  the first entry whose filter occurs in the tensor name (``null`` or ``"*"`` match every tensor)
  gives V, a scalar or a gradient.

A setting that yields nothing (no filter matches, an empty list) falls back to the next scope:
the model's own parameters, then the global ones, then the operator's default. For a tensor
inside layer i of an L-layer model t = i / (L − 1) (t = 1 when L = 1); embeddings, the final norm,
lm_head and other tensors outside the layers use t = 0.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config_types import MergeConfig, ModelRef
from .config_yaml import FILTER_ENTRY_KEYS, MODEL_ENTRY_KEYS, check_keys, dump_yaml, load_yaml
from .dtypes import CONFIG_NAME, parse_config_dtype
from .errors import ConfigError
from .layers import layer_index
from .model_files import refuse_pickle
from .operators.base import REQUIRED, Operator, Param, TensorParams
from .operators.registry import get_operator

_TRUE_WORDS = {"true", "yes", "on", "y", "t", "1"}
_FALSE_WORDS = {"false", "no", "off", "n", "f", "0"}


# ---------------------------------------------------------------------------------------------
# Loading and parsing


def load_config(path: str | Path, check_paths: bool = True) -> MergeConfig:
    """Read a mergekit-style YAML file; model paths are relative to the file's directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path} ({exc})") from None
    mapping = load_yaml(text, source=str(path))
    return parse_config(mapping, base_dir=path.resolve().parent, check_paths=check_paths)


def parse_config(mapping: Mapping[str, Any], base_dir: Path | None = None,
                 check_paths: bool = True) -> MergeConfig:
    """Check a config mapping and build the MergeConfig the engine runs.

    The base model is handled as mergekit does: a base listed under ``models`` too is not a
    separate input; for a method that ignores a base (linear, karcher, passthrough) a given
    base is one more input, appended after the models unless it is listed among them, and gets
    its per-model parameters from that entry or the global parameters.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError("the config must be a mapping with merge_method, models and friends; "
                          f"got {type(mapping).__name__}")
    check_keys(mapping)
    method = mapping.get("merge_method")
    if not isinstance(method, str) or not method:
        raise ConfigError("merge_method is missing: name the merge method, e.g. "
                          "merge_method: ties")
    operator = get_operator(method)
    base_dir = Path.cwd() if base_dir is None else Path(base_dir)

    global_params = _parse_parameters(operator, mapping.get("parameters"), "parameters",
                                      per_model=False)
    entries = _parse_model_entries(operator, mapping.get("models"), base_dir, check_paths)
    base = None
    if mapping.get("base_model") is not None:
        base = _model_ref(mapping["base_model"], {}, "base_model", base_dir, check_paths)

    base_model, models = _place_base(operator, base, entries)
    appended_base = base if base is not None and models and models[-1] is base else None
    _check_input_count(operator, models, base is not None)
    _check_required(operator, global_params, models, appended_base)
    return MergeConfig(
        merge_method=method,
        operator=operator,
        base_model=base_model,
        models=models,
        parameters=global_params,
        dtype=parse_config_dtype(mapping.get("dtype"), "dtype"),
        out_dtype=parse_config_dtype(mapping.get("out_dtype"), "out_dtype"),
        raw=copy.deepcopy(dict(mapping)),
    )


def _parse_model_entries(operator: Operator, value: Any, base_dir: Path,
                         check_paths: bool) -> list[ModelRef]:
    if not isinstance(value, list) or not value:
        raise ConfigError("models is missing or empty: list the models to merge as "
                          "- model: PATH (with optional parameters)")
    refs: list[ModelRef] = []
    for i, entry in enumerate(value):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise ConfigError(f"{where}: write each model as a mapping {{model: PATH, "
                              f"parameters: {{...}}}}; got {entry!r}")
        extra = [k for k in entry if k not in MODEL_ENTRY_KEYS]
        if extra:
            raise ConfigError(f"{where}: unknown key {extra[0]!r}; a model entry takes only "
                              f"{', '.join(MODEL_ENTRY_KEYS)}")
        where = f"{where} ({entry['model']})"
        params = _parse_parameters(operator, entry.get("parameters"), where, per_model=True)
        ref = _model_ref(entry["model"], params, where, base_dir, check_paths)
        for j, other in enumerate(refs):
            if other.path == ref.path:
                raise ConfigError(f"{where}: the same model as models[{j}] ({other.name}); "
                                  "list each model once")
        refs.append(ref)
    return refs


def _model_ref(value: Any, params: dict[str, Any], where: str, base_dir: Path,
               check_paths: bool) -> ModelRef:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: the model must be a path to a local model directory; "
                          f"got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    refuse_pickle(path)
    path = path.resolve()
    if check_paths:
        if not path.exists():
            raise ConfigError(f"{where}: model path {value!r} not found (looked at {path}); "
                              "give a local model directory")
        if not path.is_dir():
            raise ConfigError(f"{where}: model path {value!r} is not a directory; give the "
                              "model directory that holds its safetensors files")
    return ModelRef(path=path, parameters=params, name=value)


def _place_base(operator: Operator, base: ModelRef | None,
                entries: list[ModelRef]) -> tuple[ModelRef | None, list[ModelRef]]:
    """Split the config's models into (base passed to the operator, non-base inputs)."""
    if base is None:
        if operator.base == "required":
            raise ConfigError(f"{operator.name} needs a base_model: add base_model: PATH")
        return None, list(entries)
    listed = next((ref for ref in entries if ref.path == base.path), None)
    if operator.base == "ignored":
        # mergekit: the base is one more input, not added twice when it is listed.
        return None, list(entries) if listed is not None else [*entries, base]
    # The base may also be listed under models; it is then not a non-base input, and
    # (as in mergekit) its per-model parameters there are not used.
    if listed is not None:
        base = ModelRef(path=base.path, parameters=listed.parameters, name=base.name)
    return base, [ref for ref in entries if ref.path != base.path]


def _check_input_count(operator: Operator, models: list[ModelRef], base_given: bool) -> None:
    lo, hi, n = operator.min_inputs, operator.max_inputs, len(models)
    if n < lo:
        wanted, k = ("exactly" if hi == lo else "at least"), lo
    elif hi is not None and n > hi:
        wanted, k = ("exactly" if hi == lo else "at most"), hi
    else:
        return
    noun = "model" if k == 1 else "models"
    if operator.base == "ignored":
        note = " (the base_model counts as one of them)" if base_given else ""
        raise ConfigError(f"{operator.name} takes {wanted} {k} {noun}{note}; got {n}")
    if not base_given:
        raise ConfigError(f"{operator.name} takes {wanted} {k} {noun}; got {n}")
    raise ConfigError(f"{operator.name} takes {wanted} {k} {noun} besides the base_model; "
                      f"got {n}")


def _check_required(operator: Operator, global_params: dict[str, Any],
                    models: list[ModelRef], appended_base: ModelRef | None) -> None:
    """Every required parameter must be set somewhere (whether a value applies to every tensor
    is only known per tensor, see resolve_params)."""
    for param in operator.params:
        if param.default is not REQUIRED or param.name in global_params:
            continue
        if param.scope == "global":
            raise ConfigError(f"{operator.name} needs parameter {param.name}: set it under "
                              "parameters")
        for ref in models:
            if param.name in ref.parameters:
                continue
            if ref is appended_base:
                raise ConfigError(
                    f"{operator.name} treats base_model {ref.name} as one more input, which "
                    f"needs a {param.name}: list the base under models with a {param.name}, or "
                    f"set {param.name} under the global parameters")
            raise ConfigError(f"model {ref.name}: {operator.name} needs {param.name}; set it "
                              "under this model's parameters or under the global parameters")


# ---------------------------------------------------------------------------------------------
# Parameter settings


def _parse_parameters(operator: Operator, value: Any, where: str,
                      per_model: bool) -> dict[str, Any]:
    """Check names and value shapes of one parameters mapping; return it normalised."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: parameters must be a mapping of name: value; got {value!r}")
    by_name = {p.name: p for p in operator.params}
    result: dict[str, Any] = {}
    for name, setting in value.items():
        param = by_name.get(name)
        if param is None:
            raise ConfigError(f"{where}: unknown parameter {name!r} for {operator.name}; "
                              f"{_describe_params(operator)}")
        if per_model and param.scope == "global":
            raise ConfigError(f"{where}: {name} is a global parameter of {operator.name}; set "
                              "it under the top-level parameters, not under a model")
        result[name] = _normalize_setting(param, setting, f"{where}: {name}")
    return result


def _describe_params(operator: Operator) -> str:
    per_model = [p.name for p in operator.params if p.scope == "model"]
    shared = [p.name for p in operator.params if p.scope == "global"]
    if not per_model and not shared:
        return "it takes no parameters"
    parts = []
    if per_model:
        parts.append(f"per model (or global): {', '.join(per_model)}")
    if shared:
        parts.append(f"global: {', '.join(shared)}")
    return "its parameters are " + "; ".join(parts)


def _normalize_setting(param: Param, setting: Any, where: str) -> Any:
    """Scalar, gradient list, or filter list -> the same with every value checked and typed."""
    if isinstance(setting, Mapping):
        setting = [setting]  # mergekit accepts a single {filter, value}
    if isinstance(setting, list):
        if all(isinstance(e, Mapping) for e in setting) and setting:
            return [_normalize_filter_entry(param, e, f"{where}[{i}]")
                    for i, e in enumerate(setting)]
        return _normalize_gradient(param, setting, where)
    return _normalize_scalar(param, setting, where)


def _normalize_filter_entry(param: Param, entry: Mapping[str, Any], where: str) -> dict:
    extra = [k for k in entry if k not in FILTER_ENTRY_KEYS]
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; a filter entry takes only "
                          "filter and value")
    if "value" not in entry:
        raise ConfigError(f"{where}: filter entry without a value; write {{filter: SUBSTRING, "
                          "value: V}")
    pattern = entry.get("filter")
    if pattern is not None and not isinstance(pattern, str):
        raise ConfigError(f"{where}: filter must be a substring of tensor names (or null / "
                          f"'*' for all); got {pattern!r}")
    value = entry["value"]
    if isinstance(value, list):
        value = _normalize_gradient(param, value, where)
    else:
        value = _normalize_scalar(param, value, where)
    return {"filter": pattern, "value": value}


def _normalize_gradient(param: Param, values: list, where: str) -> list:
    if any(isinstance(v, (list, Mapping)) for v in values):
        raise ConfigError(f"{where}: a list must hold only numbers (a gradient) or only "
                          "{filter, value} entries; got a mix")
    return [_normalize_scalar(param, v, where) for v in values]


def _normalize_scalar(param: Param, value: Any, where: str) -> Any:
    """Accept what mergekit (pydantic) accepts for the parameter's type, then Param.coerce.

    YAML reads 1e-5 as a string; numeric strings become numbers for numeric parameters, and
    0/1 (as numbers or words such as yes/off) become booleans for boolean ones."""
    if value is None:
        raise ConfigError(f"{where}: has no value; give a value or remove the parameter")
    if param.kind is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            value = value.strip().lower() in _TRUE_WORDS
        elif not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1):
            value = bool(value)
    elif isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass  # coerce reports it
    return param.coerce(value, where)


def _evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """One normalised setting at one tensor; None when it does not apply."""
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if isinstance(setting[0], dict):
        for entry in setting:
            pattern = entry["filter"]
            if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
                return _evaluate(entry["value"], tensor_name, t)
        return None
    return interpolate(setting, t)


def interpolate(values: list, t: float) -> Any:
    """mergekit's gradient: evenly spaced anchors v[0] at t=0 ... v[n-1] at t=1."""
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    if any(isinstance(v, bool) for v in values):
        return values[i0]
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


# ---------------------------------------------------------------------------------------------
# Per-tensor resolution


def gradient_position(tensor_name: str, num_layers: int) -> float:
    """t for gradients: layer / (num_layers − 1); 1 for a one-layer model; 0 outside layers."""
    index = layer_index(tensor_name)
    if index is None:
        return 0.0
    if index >= num_layers:
        raise ValueError(f"tensor {tensor_name} is in layer {index} but the model has "
                         f"{num_layers} layers")
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def resolve_params(config: MergeConfig, tensor_name: str, num_layers: int) -> TensorParams:
    """Every parameter of the operator for one tensor: model > global > default."""
    operator = config.operator
    t = gradient_position(tensor_name, num_layers)
    shared = {p.name: _resolve_one(p, (config.parameters,), tensor_name, t, "parameters")
              for p in operator.params if p.scope == "global"}
    models = []
    for ref in config.models:
        scopes = (ref.parameters, config.parameters)
        models.append({p.name: _resolve_one(p, scopes, tensor_name, t, f"model {ref.name}")
                       for p in operator.params if p.scope == "model"})
    params = TensorParams(shared=shared, models=models)
    operator.validate(params, f"tensor {tensor_name}")
    return params


def _resolve_one(param: Param, scopes: Iterable[Mapping[str, Any]], tensor_name: str, t: float,
                 where: str) -> Any:
    for scope in scopes:
        if param.name in scope:
            value = _evaluate(scope[param.name], tensor_name, t)
            if value is not None:
                return param.coerce(value, f"{where} at {tensor_name}")
    if param.default is REQUIRED:
        raise ConfigError(f"{where}: no value of {param.name} applies to tensor {tensor_name}; "
                          "add a filter entry that matches it (filter: '*' matches all) or a "
                          "value under the global parameters")
    return param.default


# ---------------------------------------------------------------------------------------------
# Export


def to_mergekit_yaml(config: MergeConfig) -> str:
    """The config as mergekit YAML with absolute model paths (loads back to the same config).

    For a method that ignores a base, the base is already one of the models and is written as
    such."""
    mapping: dict[str, Any] = {"merge_method": config.merge_method}
    models: list[dict[str, Any]] = []
    if config.base_model is not None:
        mapping["base_model"] = str(config.base_model.path)
        if config.base_model.parameters:
            models.append(_model_entry(config.base_model))
    models.extend(_model_entry(ref) for ref in config.models)
    mapping["models"] = models
    if config.parameters:
        mapping["parameters"] = copy.deepcopy(config.parameters)
    for key, dtype in (("dtype", config.dtype), ("out_dtype", config.out_dtype)):
        if dtype is not None:
            mapping[key] = CONFIG_NAME[dtype]
    return dump_yaml(mapping)


def _model_entry(ref: ModelRef) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": str(ref.path)}
    if ref.parameters:
        entry["parameters"] = copy.deepcopy(ref.parameters)
    return entry
