"""Run reads: the run list's search and method filter (runs/selectors.py)."""

from __future__ import annotations

import pytest

from mergehub.runs.models import MergeRun
from mergehub.runs.selectors import methods_used, runs_for

pytestmark = pytest.mark.django_db


def _run(team, author, name, tags="", note="", method="ties"):
    return MergeRun.objects.create(team=team, author=author, name=name, method=method, budget="0.5",
                                   tags=tags, note=note)


def test_search_matches_names_tags_and_notes_case_insensitively(alice, acme, mallory, rival):
    _run(acme, alice, "Llama ties sweep")
    _run(acme, alice, "second", tags="nightly,llama-3")
    _run(acme, alice, "third", note="Compared with the LLAMA baseline")
    _run(acme, alice, "unrelated", tags="mistral", note="nothing here")
    _run(rival, mallory, "rival llama", tags="llama")

    def names(**kw):
        return sorted(runs_for(user=alice, **kw).values_list("name", flat=True))

    assert names(search="llama") == ["Llama ties sweep", "second", "third"]
    assert names(search="  NIGHTLY ") == ["second"]
    assert names(search="") == names() == ["Llama ties sweep", "second", "third", "unrelated"]
    assert names(search="llama", team=acme, status="queued") == ["Llama ties sweep", "second", "third"]
    assert names(search="zzz") == []
    # mallory's search sees only her team's runs
    assert list(runs_for(user=mallory, search="llama").values_list("name", flat=True)) == ["rival llama"]


def test_the_method_filter_offers_the_methods_the_teams_runs_used(alice, acme, mallory, rival):
    _run(acme, alice, "one")
    _run(acme, alice, "two")
    _run(acme, alice, "three", method="task_arithmetic")
    _run(rival, mallory, "rival's", method="slerp")
    assert methods_used(acme) == ["task_arithmetic", "ties"]
    # the method filtered on now is offered too, so the filter shows what it filters by
    assert methods_used(acme, also="dare_ties") == ["dare_ties", "task_arithmetic", "ties"]
    assert methods_used(rival) == ["slerp"]
