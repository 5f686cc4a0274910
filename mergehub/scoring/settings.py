"""Per-kind task settings: their defaults, their checks, and the normalised dict a Task keeps.

A Task's settings always hold every setting of its kind (defaults filled in), so two tasks
scored the same way have equal settings and hence equal ``settings_key()``.
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import TaskError

NORMALIZATIONS = ("none", "tokens", "bytes")
SPLITS = ("blank_lines", "none")


def _whole_number(lower: int, upper: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lower <= value <= upper:
            raise ValueError(f"{name} must be a whole number from {lower} to {upper}, not {value!r}")
        return value
    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


# kind -> {setting: (default, check)}
SETTINGS: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any]]]] = {
    "generate": {
        "max_new_tokens": (32, _whole_number(1, 4096)),
        "stop": ("\n", _string),          # "" = stop at EOS (or max_new_tokens) only
        "strip": (True, _boolean),        # strip whitespace around output and target first
    },
    "choice": {
        "normalize": ("none", _one_of(NORMALIZATIONS)),  # divide a choice's log-likelihood by its length
    },
    "perplexity": {
        "split": ("blank_lines", _one_of(SPLITS)),
        "window": (None, _optional(_whole_number(2, 1 << 20))),  # None: the model's context length
    },
    "lm_eval": {
        "num_fewshot": (None, _optional(_whole_number(0, 1000))),  # None: the YAML's own
    },
}


def normalize_settings(kind: str, given: dict | None, path) -> dict:
    """Every setting of ``kind``: the given ones checked, the rest at their defaults."""
    known = SETTINGS[kind]
    given = dict(given or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TaskError(f"{path}: setting {unknown[0]!r} does not apply to {kind} tasks; "
                        f"known settings: {', '.join(known) or 'none'}")
    settings = {}
    for name, (default, check) in known.items():
        try:
            settings[name] = check(name, given[name]) if name in given else default
        except ValueError as exc:
            raise TaskError(f"{path}: {exc}; fix the setting") from None
    return settings
