"""The job kinds the worker knows: each app registers its runner class in ``AppConfig.ready``,
so this package never imports the apps that use it."""

from __future__ import annotations

from .runner import JobRunner

_RUNNERS: dict[str, type[JobRunner]] = {}


def register(runner: type[JobRunner]) -> type[JobRunner]:
    _RUNNERS[runner.kind] = runner
    return runner


def runners() -> list[type[JobRunner]]:
    return list(_RUNNERS.values())


def runner_for(kind: str) -> type[JobRunner]:
    return _RUNNERS[kind]
