"""Fixtures for the page tests: runs in various states (logged-in clients: tests/conftest.py)."""

from __future__ import annotations

import pytest


def ties_inputs(registered_family, budget="0.5") -> dict:
    """Keyword arguments for runs.services.create_run: a ties merge of both fixture experts."""
    experts = registered_family["experts"]
    return {"method": "ties", "base": registered_family["base"],
            "experts": [(experts[0], {"weight": 1.0, "density": 0.7}), (experts[1], {"weight": 0.5, "density": 0.7})],
            "parameters": {}, "budget": budget, "seed": 0}


def merge_post(registered_family, **overrides) -> dict:
    """Form data for the merge form: ties on both experts at budget 0.5."""
    base = registered_family["base"]
    e1, e2 = registered_family["experts"]
    data = {
        "method": "ties", "base": str(base.pk), "budget": "0.5", "seed": "0", "dtype": "", "out_dtype": "",
        "name": "", "param__normalize": "on", "param__lambda": "1.0",
        f"expert_{e1.pk}__use": "on", f"expert_{e1.pk}__weight": "1.0", f"expert_{e1.pk}__density": "0.7",
        f"expert_{e2.pk}__use": "on", f"expert_{e2.pk}__weight": "0.5", f"expert_{e2.pk}__density": "0.7",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def queued_run(registered_family, alice, acme):
    """A run that stays queued (its job is not executed)."""
    from mergehub.runs.services import create_run

    return create_run(user=alice, team=acme, name="queued ties", **ties_inputs(registered_family))


@pytest.fixture
def succeeded_run(registered_family, alice, acme, run_on_commit):
    """A ties run at budget 0.5 executed by the (sync) worker, with deviation measured."""
    from mergehub.runs.services import create_run

    with run_on_commit():
        run = create_run(user=alice, team=acme, name="done ties", measure_deviation=True,
                         **ties_inputs(registered_family))
    run.refresh_from_db()
    assert run.status == "succeeded", (run.status, run.error)
    return run
