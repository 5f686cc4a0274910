"""Run reads: the run list's search (runs/selectors.py)."""

from __future__ import annotations

import pytest

from mergehub.runs.models import MergeRun
from mergehub.runs.selectors import runs_for

pytestmark = pytest.mark.django_db


def _run(team, author, name, tags="", note=""):
    return MergeRun.objects.create(team=team, author=author, name=name, method="ties", budget="0.5",
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
