"""Name -> operator instance. Each operator module registers its classes here."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Operator

OPERATORS: dict[str, Operator] = {}


def register(cls: type[Operator]) -> type[Operator]:
    OPERATORS[cls.name] = cls()
    return cls


def get_operator(name: str) -> Operator:
    _load_all()
    try:
        return OPERATORS[name]
    except KeyError:
        known = ", ".join(sorted(OPERATORS))
        raise ConfigError(f"unknown merge_method {name!r}; known methods: {known}") from None


def _load_all() -> None:
    # Importing the modules runs their @register decorators.
    from . import _all  # noqa: F401
