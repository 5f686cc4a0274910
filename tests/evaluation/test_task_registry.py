"""Registering evaluation tasks: from a path under the team's roots or an upload, the refusals
(each with a message saying what is wrong), the demo family's built-in tasks, and the check
that a task's file did not change since it was registered."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from mergehub import scoring
from mergehub.evaluation.models import EvalTask
from mergehub.evaluation.task_registry import (delete_task, ensure_builtin_tasks, load_registered,
                                               register_task)
from mergehub.registry.roots import tasks_dir, team_dir

pytestmark = pytest.mark.django_db

CHOICES = "".join(json.dumps({"prompt": f"{w}?", "choices": ["yes", "no"], "answer": i % 2}) + "\n"
                  for i, w in enumerate(["a", "b", "c"]))


def _messages(excinfo, field: str) -> str:
    return " ".join(excinfo.value.message_dict[field])


# --- from a path ------------------------------------------------------------------------------

def test_a_file_under_the_roots_is_parsed_hashed_and_stored(task_file, acme, carol):
    task = register_task(team=acme, user=carol, name="reverse", path=f"  {task_file}  ",
                         task_settings={"max_new_tokens": 6}, description="  backwards  ")
    assert task.kind == EvalTask.Kind.GENERATE and task.metric == "exact_match" and task.higher_is_better
    assert task.source == EvalTask.Source.LOCAL and task.path == str(task_file)
    assert task.n_examples == 6 and task.description == "backwards" and task.added_by == carol
    assert task.content_hash == hashlib.sha256(task_file.read_bytes()).hexdigest()
    assert task.settings == {"max_new_tokens": 6, "stop": "\n", "strip": True}  # defaults filled in
    assert task.settings_key == scoring.load_task(task_file, settings={"max_new_tokens": 6}).settings_key()


def test_the_kind_is_detected_from_the_records(tmp_path, acme, alice):
    path = tmp_path / "yesno.jsonl"
    path.write_text(CHOICES)
    task = register_task(team=acme, user=alice, name="yes or no", path=str(path))
    assert (task.kind, task.metric, task.n_examples) == ("choice", "accuracy", 3)
    text = tmp_path / "prose.txt"
    text.write_text("one paragraph\n\nand another\n")
    task = register_task(team=acme, user=alice, name="prose", path=str(text))
    assert (task.kind, task.metric, task.higher_is_better, task.n_examples) == ("perplexity", "perplexity", False, 2)


def test_a_path_outside_the_roots_is_refused(tmp_path_factory, acme, alice):
    outside = tmp_path_factory.mktemp("elsewhere") / "task.jsonl"
    outside.write_text(json.dumps({"prompt": "a", "target": "b"}) + "\n")
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="outside", path=str(outside))
    message = _messages(excinfo, "path")
    assert "is not inside your team's checkpoint roots" in message and "task file" in message
    assert not EvalTask.objects.exists()


def test_another_teams_folder_is_refused_though_it_is_under_a_shared_root(acme, rival, alice, mallory,
                                                                         task_file):
    """The data directory lies under the shared checkpoint root in tests: rival's uploaded
    tasks are still not acme's to register."""
    upload = SimpleUploadedFile("secret.jsonl", task_file.read_bytes())
    theirs = register_task(team=rival, user=mallory, name="secret", upload=upload)
    assert theirs.path.startswith(str(team_dir(rival)))
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="stolen", path=theirs.path)
    assert "is not inside your team's checkpoint roots" in _messages(excinfo, "path")
    assert not EvalTask.objects.filter(team=acme).exists()


def test_a_missing_file_is_refused(tmp_path, acme, alice):
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="gone", path=str(tmp_path / "nowhere.jsonl"))
    assert "no such file; check the path" in _messages(excinfo, "path")


def test_a_folder_is_refused(tmp_path, acme, alice):
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="folder", path=str(tmp_path))
    assert "is not a regular file" in _messages(excinfo, "path")


def test_a_malformed_line_is_refused_with_its_number(tmp_path, acme, alice):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"prompt": "a", "target": "b"}) + "\n\n" + '{"prompt": "c", "target": \n')
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="broken", path=str(path))
    message = _messages(excinfo, "path")
    assert f"{path}, line 3: not valid JSON" in message
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"prompt": "a", "target": "b"}) + "\n" + CHOICES)
    with pytest.raises(ValidationError, match="line 2: a choice example in a generate task"):
        register_task(team=acme, user=alice, name="mixed", path=str(mixed))
    assert not EvalTask.objects.exists()


def test_a_bad_setting_is_refused(task_file, acme, alice):
    with pytest.raises(ValidationError, match="max_new_tokens must be a whole number"):
        register_task(team=acme, user=alice, name="r", path=str(task_file), task_settings={"max_new_tokens": 0})
    with pytest.raises(ValidationError, match="'normalize' does not apply to generate tasks"):
        register_task(team=acme, user=alice, name="r", path=str(task_file), task_settings={"normalize": "bytes"})


def test_a_duplicate_name_is_refused_but_another_team_may_use_it(task_file, acme, rival, alice, mallory):
    register_task(team=acme, user=alice, name="reverse", path=str(task_file))
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name=" reverse ", path=str(task_file))
    assert _messages(excinfo, "name") == "Acme already has a task named 'reverse'."
    upload = SimpleUploadedFile("reverse.jsonl", task_file.read_bytes())
    assert register_task(team=rival, user=mallory, name="reverse", upload=upload).team == rival
    with pytest.raises(ValidationError, match="Give the task a name"):
        register_task(team=acme, user=alice, name="  ", path=str(task_file))


def test_both_or_neither_of_path_and_upload_is_refused(task_file, acme, alice):
    for kwargs in ({}, {"path": "   "},
                   {"path": str(task_file), "upload": SimpleUploadedFile("t.jsonl", task_file.read_bytes())}):
        with pytest.raises(ValidationError) as excinfo:
            register_task(team=acme, user=alice, name="t", **kwargs)
        assert _messages(excinfo, "path") == "Give either the path of a task file or upload one (not both)."
    assert not EvalTask.objects.exists() and not tasks_dir(acme).exists()


def test_a_viewer_may_not_register_or_delete(task_file, acme, bob, alice):
    with pytest.raises(PermissionDenied, match="viewer|member"):
        register_task(team=acme, user=bob, name="t", path=str(task_file))
    task = register_task(team=acme, user=alice, name="t", path=str(task_file))
    with pytest.raises(PermissionDenied):
        delete_task(task=task, user=bob)
    assert EvalTask.objects.filter(pk=task.pk).exists()


# --- uploads ----------------------------------------------------------------------------------

def test_an_upload_is_kept_in_the_teams_tasks_folder_named_by_its_hash(task_file, acme, carol):
    data = task_file.read_bytes()
    task = register_task(team=acme, user=carol, name="uploaded",
                         upload=SimpleUploadedFile("my words.JSONL", data), task_settings={"max_new_tokens": 6})
    digest = hashlib.sha256(data).hexdigest()
    stored = tasks_dir(acme) / f"{digest}.jsonl"
    assert task.source == EvalTask.Source.UPLOAD and task.path == str(stored)
    assert stored.read_bytes() == data and task.content_hash == digest and task.n_examples == 6
    assert [p.name for p in tasks_dir(acme).iterdir()] == [stored.name]  # no temporary file left
    load_registered(task)  # the stored copy is what is scored


def test_an_upload_with_another_suffix_is_refused(acme, alice):
    for name in ("task.yaml", "task.py", "task"):
        with pytest.raises(ValidationError) as excinfo:
            register_task(team=acme, user=alice, name="t", upload=SimpleUploadedFile(name, b"{}\n"))
        assert "Upload a .jsonl task" in _messages(excinfo, "upload")
    assert not tasks_dir(acme).exists()


def test_an_upload_over_the_limit_is_refused(acme, alice, settings, task_file):
    data = task_file.read_bytes()
    settings.MERGEHUB_TASK_MAX_BYTES = len(data) - 1
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="big", upload=SimpleUploadedFile("big.jsonl", data))
    assert _messages(excinfo, "upload") == f"The file has {len(data)} bytes; the limit is {len(data) - 1}."
    assert not EvalTask.objects.exists()
    settings.MERGEHUB_TASK_MAX_BYTES = len(data)
    assert register_task(team=acme, user=alice, name="big", upload=SimpleUploadedFile("big.jsonl", data))


def test_a_malformed_upload_is_refused_on_the_upload_field(acme, alice):
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="t", upload=SimpleUploadedFile("t.jsonl", b'{"prompt": "a"}\n'))
    assert "line 1: missing 'target'" in _messages(excinfo, "upload")


# --- lm-evaluation-harness tasks ----------------------------------------------------------------

def _lm_eval_yaml(tmp_path, data_file: str):
    path = tmp_path / "harness.yaml"
    path.write_text(f"task: tiny\ndataset_path: json\ndataset_kwargs:\n  data_files: {data_file}\n"
                    "output_type: generate_until\ndoc_to_text: \"{{prompt}}\"\ndoc_to_target: \"{{target}}\"\n")
    return path


def test_lm_eval_tasks_are_refused_unless_the_site_allows_them(tmp_path, acme, alice, settings, task_file):
    settings.MERGEHUB_ALLOW_LM_EVAL_TASKS = False
    path = _lm_eval_yaml(tmp_path, str(task_file))
    for kind in ("lm_eval", "auto"):
        with pytest.raises(ValidationError) as excinfo:
            register_task(team=acme, user=alice, name="harness", path=str(path), kind=kind)
        assert "lm-evaluation-harness tasks are off on this site" in _messages(excinfo, "kind")
    assert not EvalTask.objects.exists()
    settings.MERGEHUB_ALLOW_LM_EVAL_TASKS = True
    task = register_task(team=acme, user=alice, name="harness", path=str(path))
    assert task.kind == EvalTask.Kind.LM_EVAL and task.metric == "exact_match"


def test_a_refused_lm_eval_yaml_is_not_read_for_its_data_files(tmp_path, acme, alice, settings):
    """With lm-eval off, the YAML's data_files are never looked at: the answer must not tell
    whether a file outside the team's roots exists."""
    settings.MERGEHUB_ALLOW_LM_EVAL_TASKS = False
    path = _lm_eval_yaml(tmp_path, "/no/such/place/data.jsonl")
    with pytest.raises(ValidationError) as excinfo:
        register_task(team=acme, user=alice, name="probe", path=str(path))
    assert "kind" in excinfo.value.message_dict and "not found" not in str(excinfo.value)


def test_an_unknown_kind_is_refused(task_file, acme, alice):
    with pytest.raises(ValidationError, match="Kind must be auto or one of"):
        register_task(team=acme, user=alice, name="t", path=str(task_file), kind="vibes")


# --- the built-in tasks and the registered file -----------------------------------------------------

def test_builtin_tasks_are_registered_once(acme, alice):
    from mergehub.family import BUILTIN_TASKS, TASK_NAMES

    first = ensure_builtin_tasks(acme, alice)
    assert [t.name for t in first] == [spec["name"] for spec in BUILTIN_TASKS] == list(TASK_NAMES)
    assert len(first) == 4
    for task, spec in zip(first, BUILTIN_TASKS):
        assert task.source == EvalTask.Source.BUILTIN and task.kind == "generate" and task.n_examples > 0
        assert task.path == str(spec["path"]) and task.description == spec["description"]
        assert task.content_hash == hashlib.sha256(spec["path"].read_bytes()).hexdigest()
    again = ensure_builtin_tasks(acme, alice)
    assert [t.pk for t in again] == [t.pk for t in first] and EvalTask.objects.count() == 4


def test_builtin_tasks_keep_a_teams_own_task_of_the_same_name(acme, alice, task_file):
    own = register_task(team=acme, user=alice, name="reverse", path=str(task_file))
    tasks = ensure_builtin_tasks(acme)
    assert own.pk in [t.pk for t in tasks] and EvalTask.objects.filter(team=acme).count() == 4


def test_load_registered_refuses_a_file_changed_since_registration(task_file, acme, alice):
    task = register_task(team=acme, user=alice, name="reverse", path=str(task_file))
    assert load_registered(task).content_hash == task.content_hash
    with task_file.open("a") as f:
        f.write(json.dumps({"prompt": "reverse:ab=", "target": "ba"}) + "\n")
    with pytest.raises(scoring.TaskError) as excinfo:
        load_registered(task)
    assert f"task reverse: its file {task_file} changed since it was registered" in str(excinfo.value)
    assert "register it again under a new name" in str(excinfo.value)


def test_deleting_a_task_keeps_its_scores(task_file, acme, carol):
    from mergehub.evaluation.models import EvalResult

    task = register_task(team=acme, user=carol, name="reverse", path=str(task_file))
    result = EvalResult.objects.create(team=acme, model_hash="m" * 64, task=task, task_name=task.name,
                                       task_hash=task.content_hash, settings_key=task.settings_key,
                                       metric=task.metric, n=1, score=1.0, ci_low=0.2, ci_high=1.0)
    delete_task(task=task, user=carol)
    result.refresh_from_db()
    assert not EvalTask.objects.exists() and result.task is None and result.task_name == "reverse"
