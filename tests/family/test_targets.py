"""The family's targets on the full recipe (mergehub/family/targets.py): built once, with the
experts in two worker processes, then scored and merged as bench/family.py does.

Slow: about 2 minutes of training and 1 of scoring on a 2-core machine.
"""

from __future__ import annotations

import time

import pytest

from bench.family import evaluate_family
from mergehub.family.targets import MERGE_SETTINGS, check_targets
from mergehub.family.train import train_family

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("full-family")
    started = time.perf_counter()
    info = train_family(root / "family", seed=0)
    build_seconds = time.perf_counter() - started
    scores, merge_scores = evaluate_family(info, root / "merges")
    return info, build_seconds, scores, merge_scores


def test_every_target_holds(measured, capsys):
    info, build_seconds, scores, merge_scores = measured
    targets = check_targets(build_seconds, scores, merge_scores)
    with capsys.disabled():
        print(f"\nfamily built in {build_seconds:.1f} s (seed 0)")
        for name, s in {**scores, **merge_scores}.items():
            print(f"  {name:16} " + "  ".join(f"{t} {v:.3f}" for t, v in s.items()))
        for t in targets:
            print(f"  {'PASS' if t.passed else 'FAIL'}  {t.name}: {t.measured:.3f} (required {t.required})")
    assert not [t for t in targets if not t.passed]


def test_merged_models_load_with_transformers(measured):
    from transformers import AutoTokenizer, LlamaForCausalLM

    merges = measured[0].root.parent / "merges"  # where the fixture's evaluate_family wrote them
    for method in MERGE_SETTINGS:
        assert LlamaForCausalLM.from_pretrained(str(merges / method)).config.hidden_size == 128
        assert AutoTokenizer.from_pretrained(str(merges / method))("sort:ab=")["input_ids"]
