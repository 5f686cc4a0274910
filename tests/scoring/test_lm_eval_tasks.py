"""lm_eval tasks: run offline through lm-evaluation-harness (skipped when it is not installed),
and the clear error when it is missing."""

from __future__ import annotations

import importlib.util

import pytest

from mergehub.scoring import TaskError, evaluate_model, load_task

from .conftest import write_jsonl

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAVE_LM_EVAL, reason="lm_eval is not installed (pip install 'mergehub[lmeval]')")

RECORDS = [{"prompt": "x=", "target": "abc"}, {"prompt": "y:", "target": "0123"},
           {"prompt": "z=", "target": "abd"}, {"prompt": "w:", "target": "012"}]
YAML = """task: tiny_successor
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/examples.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def yaml_task(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "examples.jsonl", RECORDS)
    (tmp_path / "task.yaml").write_text(YAML)
    return tmp_path / "task.yaml"


@needs_lm_eval
def test_lm_eval_task_matches_the_builtin_generate_scorer(tmp_path, yaml_task, successor_model, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # data_files are relative to the YAML, not the working directory
    native = write_jsonl(tmp_path / "native.jsonl", RECORDS)
    events = []
    [lm_eval_score, native_score] = evaluate_model(successor_model, [load_task(yaml_task), load_task(native)],
                                                   sample_size=2, progress=events.append)
    assert (lm_eval_score.task, lm_eval_score.kind) == ("tiny_successor", "lm_eval")
    assert lm_eval_score.metric == "exact_match"
    assert lm_eval_score.n == native_score.n == 4
    assert lm_eval_score.score == native_score.score == 0.5
    assert (lm_eval_score.ci_low, lm_eval_score.ci_high) == (native_score.ci_low, native_score.ci_high)
    assert [s["output"] for s in lm_eval_score.samples] == ["abc", "0123"]
    assert events[-1].done == events[-1].total == 8


@needs_lm_eval
def test_cancel_stops_the_lm_eval_child(yaml_task, successor_model):
    import time

    from mergehub.engine.api import Cancelled

    calls = []

    def cancel() -> bool:  # before the run, before the task, then at the first poll of the child
        calls.append(1)
        return len(calls) >= 3

    started = time.perf_counter()
    with pytest.raises(Cancelled):
        evaluate_model(successor_model, [load_task(yaml_task)], cancel=cancel)
    assert time.perf_counter() - started < 3  # lm-eval alone takes longer to start


def test_missing_lm_eval_is_a_clear_task_error(yaml_task, successor_model, monkeypatch):
    loaded = load_task(yaml_task) if HAVE_LM_EVAL else None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    expected = r"lm_eval tasks need lm-evaluation-harness, which is not installed; run pip install 'mergehub\[lmeval\]'"
    with pytest.raises(TaskError, match=expected):
        load_task(yaml_task)
    if loaded is not None:  # loaded while it was there, evaluated after it went
        with pytest.raises(TaskError, match=expected):
            evaluate_model(successor_model, [loaded])
