"""The YAML of a mergekit-style config: the keys it may hold, a strict loader and the dumper.

Torch-free (config.py, which checks a config against the operators, is not): a page can read,
check the keys of and show a config without importing the engine.
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from .errors import ConfigError

ALLOWED_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype")

# Sections the engine reads past: MergeHub's own notes on an exported run (checkpoint names,
# budget, seed, block size), which mergekit ignores as well.
METADATA_KEYS = ("mergehub",)

# mergekit keys we recognise but cannot honour (yet): each gets its own explanation.
UNSUPPORTED_KEYS = {
    "slices": "slices are not supported yet; list models instead",
    "modules": "modules are not supported yet; list models instead",
    "tokenizer_source": (
        "tokenizer_source is not supported: MergeHub copies the base model's tokenizer and needs "
        "every model to share its vocabulary; remove the key"),
    "tokenizer": (
        "tokenizer is not supported: MergeHub copies the base model's tokenizer and needs every "
        "model to share its vocabulary; remove the key"),
    "chat_template": (
        "chat_template is not supported yet; remove the key and set the template in the merged "
        "model's tokenizer_config.json"),
}

MODEL_ENTRY_KEYS = ("model", "parameters")
FILTER_ENTRY_KEYS = ("filter", "value")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if duplicate:
                mark = key_node.start_mark
                raise ConfigError(f"duplicate key {key!r} at line {mark.line + 1}; keep only one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _NoAliasLoader(_StrictLoader):
    """_StrictLoader that also refuses anchors and aliases: YAML from outside (a web form, an
    API call) could otherwise nest aliases into a value that grows exponentially when it is
    copied, printed or stored."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML aliases (*name) are not accepted here (line {mark.line + 1}); "
                              "write the value out")
        return super().compose_node(parent, index)


def load_yaml(text: str, *, source: str = "", allow_aliases: bool = True) -> Any:
    """YAML text as Python data (safe types only; duplicate keys refused). Every error is a
    ConfigError that says where: ``source`` (a file name) and the line and column."""
    prefix = f"{source}: " if source else ""
    loader = _StrictLoader if allow_aliases else _NoAliasLoader
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{prefix}invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefix}invalid YAML: {' '.join(str(exc).split())}") from None
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def check_keys(mapping: Mapping[str, Any]) -> None:
    """Every top-level key must be one the engine honours (or MergeHub's metadata section)."""
    for key in mapping:
        if key in METADATA_KEYS:
            continue
        if key in UNSUPPORTED_KEYS:
            raise ConfigError(UNSUPPORTED_KEYS[key])
        if key not in ALLOWED_KEYS:
            raise ConfigError(f"unknown key {key!r} in the config; allowed keys: "
                              f"{', '.join(ALLOWED_KEYS)}")


class _ConfigDumper(yaml.SafeDumper):
    """Writes numeric lists (gradients) inline, as mergekit does."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def dump_yaml(mapping: Mapping[str, Any]) -> str:
    """A config mapping as YAML, keys in the given order and gradients inline (as mergekit)."""
    return yaml.dump(dict(mapping), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True)
