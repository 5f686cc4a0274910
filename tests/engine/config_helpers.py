"""Shared by the tests/engine/test_config_*.py files: fake operators (the config layer only needs
their metadata and validate()), the ``fake_operators`` and ``models`` fixtures, and helpers to
parse a config and catch its one-line ConfigError.

A test module takes the fixtures by importing them: ``from config_helpers import
fake_operators, models`` (``fake_operators`` is autouse, so importing it registers the fakes
for every test in that module)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from mergehub.engine.config import parse_config
from mergehub.engine.errors import ConfigError
from mergehub.engine.operators import registry
from mergehub.engine.operators.base import REQUIRED, Operator, Param, TensorParams


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
