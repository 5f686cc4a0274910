"""load_task and detect_kind: kinds, settings, hashes, and every TaskError case."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from mergehub.scoring import Task, TaskError, detect_kind, load_task

from .conftest import write_jsonl

GEN = {"prompt": "q=", "target": "abc"}
CHOICE = {"prompt": "q:", "choices": ["0123", "abc"], "answer": 0}


def test_generate_task_defaults_and_hash(tmp_path):
    path = write_jsonl(tmp_path / "rev.jsonl", [GEN, "", {"prompt": "x", "target": ""}])
    task = load_task(path)
    assert (task.name, task.kind, task.metric, task.higher_is_better) == ("rev", "generate", "exact_match", True)
    assert task.settings == {"max_new_tokens": 32, "stop": "\n", "strip": True}
    assert task.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert task.examples == (GEN, {"prompt": "x", "target": ""})
    json.dumps(task.settings)
    hash(task)  # usable as a dict key despite its dict and tuple fields


def test_choice_answer_as_text_becomes_an_index(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [CHOICE, {**CHOICE, "answer": "abc"}])
    task = load_task(path, name="pick", settings={"normalize": "tokens"})
    assert (task.name, task.kind, task.metric) == ("pick", "choice", "accuracy")
    assert [e["answer"] for e in task.examples] == [0, 1]
    assert task.settings == {"normalize": "tokens"}


def test_perplexity_documents_split_on_blank_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("first line\nsecond line\n\n  \nthird\n\n")
    task = load_task(path)
    assert (task.kind, task.metric, task.higher_is_better) == ("perplexity", "perplexity", False)
    assert task.examples == ({"text": "first line\nsecond line", "line": 1}, {"text": "third", "line": 5})
    whole = load_task(path, settings={"split": "none"})
    assert whole.examples == ({"text": "first line\nsecond line\n\n  \nthird", "line": 1},)


def test_settings_key_follows_settings_and_kind(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [GEN])
    a, b = load_task(path), load_task(path, settings={"max_new_tokens": 32})
    assert a.settings_key() == b.settings_key()
    assert a.settings_key() != load_task(path, settings={"stop": ""}).settings_key()
    text = load_task(path, kind="perplexity")
    assert text.content_hash == a.content_hash and text.settings_key() != a.settings_key()


def test_detect_kind(tmp_path):
    assert detect_kind(write_jsonl(tmp_path / "g.jsonl", [GEN])) == "generate"
    assert detect_kind(write_jsonl(tmp_path / "c.json", [CHOICE])) == "choice"
    assert detect_kind(tmp_path / "x.txt") == "perplexity"  # from the name alone
    assert detect_kind(tmp_path / "x.yaml") == "lm_eval"


def _error(tmp_path, name, content, **kwargs) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TaskError) as info:
        load_task(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("content, expected", [
    ('{"prompt": "a", "target": "b"}\n{"prompt": "a", \n', "line 2: not valid JSON"),
    ('{"prompt": "a", "target": "b"}\n[1, 2]\n', "line 2: a JSON list, not an object"),
    ('{"prompt": "a"}\n', "line 1: missing 'target'"),
    ('{"prompt": "a", "target": "b", "id": 3}\n', "line 1: unexpected 'id'"),
    ('\n{"prompt": "a", "target": "b"}\n{"prompt": "q", "choices": ["x", "y"], "answer": 0}\n',
     "line 3: a choice example in a generate task"),
    ('{"prompt": "q", "choices": ["x", "y"], "answer": 2}\n', "line 1: answer 2 is out of range"),
    ('{"prompt": "q", "choices": ["x", "y"], "answer": -1}\n', "line 1: answer -1 is out of range"),
    ('{"prompt": "q", "choices": ["x", "y"], "answer": true}\n', "line 1: answer True is out of range"),
    ('{"prompt": "q", "choices": ["x", "y"], "answer": "z"}\n', "line 1: answer 'z' is not one of the choices"),
    ('{"prompt": "q", "choices": ["x"], "answer": 0}\n', "line 1: 'choices' must be a list of at least two"),
    ('{"prompt": "", "target": "b"}\n', "line 1: 'prompt' must be a non-empty string"),
    ('{"prompt": "a", "target": 3}\n', "line 1: 'target' must be a string, not 3"),
    ("\n   \n", "the task is empty"),
    ("", "the task is empty"),
])
def test_bad_jsonl_lines(tmp_path, content, expected):
    assert expected in _error(tmp_path, "t.jsonl", content)


def test_bad_utf8_names_the_line(tmp_path):
    assert "line 2: not valid UTF-8" in _error(tmp_path, "t.jsonl", b'{"prompt": "a", "target": "b"}\n\xff\xfe\n')


def test_empty_text_file(tmp_path):
    assert "the task is empty" in _error(tmp_path, "t.txt", "\n\n  \n")


def test_file_checks(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        load_task(tmp_path / "missing.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(TaskError, match="not a regular file"):
        load_task(tmp_path / "dir.jsonl")
    assert "more than the limit of 10" in _error(tmp_path, "big.jsonl", json.dumps(GEN), max_bytes=10)
    assert "cannot tell the task kind" in _error(tmp_path, "t.csv", "a,b\n")


def test_bad_settings_and_kind(tmp_path):
    content = json.dumps(GEN)
    assert "setting 'normalize' does not apply to generate" in _error(tmp_path, "a.jsonl", content,
                                                                      settings={"normalize": "tokens"})
    assert "max_new_tokens must be a whole number" in _error(tmp_path, "b.jsonl", content,
                                                             settings={"max_new_tokens": 0})
    assert "strip must be true or false" in _error(tmp_path, "c.jsonl", content, settings={"strip": "yes"})
    assert "unknown task kind 'qa'" in _error(tmp_path, "d.jsonl", content, kind="qa")
    assert "missing 'choices'" in _error(tmp_path, "e.jsonl", '{"prompt": "q", "answer": 1}', kind="choice")


LM_EVAL_YAML = """task: tiny_rev
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
"""


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                    reason="lm_eval is not installed (pip install 'mergehub[lmeval]')")
def test_lm_eval_yaml_hashes_its_data_files(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [GEN])
    (tmp_path / "rev.yaml").write_text(LM_EVAL_YAML)
    task = load_task(tmp_path / "rev.yaml")
    assert isinstance(task, Task)
    assert (task.name, task.kind, task.metric, task.examples) == ("tiny_rev", "lm_eval", "exact_match", ())
    assert task.settings == {"num_fewshot": None}
    write_jsonl(tmp_path / "data.jsonl", [GEN, GEN])
    assert load_task(tmp_path / "rev.yaml").content_hash != task.content_hash


@pytest.mark.parametrize("yaml_text, expected", [
    (LM_EVAL_YAML + "process_docs: !function utils.process\n", "would run Python code"),
    (LM_EVAL_YAML + "include: base.yaml\n", "'include' pulls in other YAML files"),
    (LM_EVAL_YAML.replace("task: tiny_rev\n", ""), "missing 'task: NAME'"),
    (LM_EVAL_YAML.replace("data.jsonl", "nope.jsonl"), "data file 'nope.jsonl' not found"),
    (LM_EVAL_YAML + "metric_list: [\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_lm_eval_yaml(tmp_path, yaml_text, expected):
    write_jsonl(tmp_path / "data.jsonl", [GEN])
    assert expected in _error(tmp_path, "t.yaml", yaml_text)
