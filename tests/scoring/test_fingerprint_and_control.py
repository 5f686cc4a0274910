"""model_fingerprint, model-directory checks, pick_device, progress and cancellation."""

from __future__ import annotations

import shutil

import pytest

from mergehub.engine.api import Cancelled, ConfigError, InvalidCheckpoint, Progress
from mergehub.scoring import evaluate_model, model_fingerprint, pick_device

from .conftest import write_jsonl


@pytest.fixture
def model_copy(tmp_path, successor_model):
    return shutil.copytree(successor_model, tmp_path / "copy")


def test_fingerprint_follows_weights_and_tokenizer_only(model_copy):
    first = model_fingerprint(model_copy)
    assert len(first) == 64 and model_fingerprint(model_copy) == first
    (model_copy / "README.md").write_text("notes")
    (model_copy / "mergehub_manifest.json").write_text("{}")
    assert model_fingerprint(model_copy) == first
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = model_fingerprint(model_copy)
    assert changed != first
    tokenizer = model_copy / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("128", "127"))
    assert model_fingerprint(model_copy) not in (first, changed)


def test_model_dir_without_safetensors_is_refused(tmp_path, model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    task = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "=", "target": "abc"}])
    with pytest.raises(InvalidCheckpoint, match="no \\*.safetensors weights \\(found pytorch_model.bin\\); "
                                                "this tool never loads .bin/.pt pickles"):
        evaluate_model(model_copy, [task])
    with pytest.raises(InvalidCheckpoint, match="not a directory"):
        model_fingerprint(tmp_path / "nowhere")


def test_pick_device():
    import torch

    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_progress_counts_examples_over_all_tasks(tmp_path, successor_model):
    gen = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "=", "target": "abc"}] * 5)
    choice = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "=", "choices": ["a", "b"], "answer": 0}] * 3)
    text = tmp_path / "p.txt"
    text.write_text("abc\n\ndef\n")
    events: list[Progress] = []
    evaluate_model(successor_model, [gen, choice, text], batch_size=2, progress=events.append)
    assert {(e.stage, e.unit, e.total) for e in events} == {("evaluate", "examples", 10)}
    done = [e.done for e in events]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 10
    assert [e.message for e in events if e.done == 5][-1] == "g"
    assert events[-1].message == "p"


def test_cancel_stops_promptly(tmp_path, successor_model):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "=", "target": "abc"}] * 8)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    events = []
    with pytest.raises(Cancelled, match="cancelled"):
        evaluate_model(successor_model, [path], batch_size=2, cancel=cancel, progress=events.append)
    assert events[-1].done < 8  # stopped before the task's end


def test_bad_options(tmp_path, successor_model):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "=", "target": "abc"}])
    for options in ({"batch_size": 0}, {"sample_size": -1}, {"limit": 0}):
        with pytest.raises(ConfigError):
            evaluate_model(successor_model, [path], **options)
