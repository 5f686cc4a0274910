"""The four tasks, the held-out split, and the committed evaluation files."""

from __future__ import annotations

import json
import random

import pytest

from mergehub.family import tasks
from mergehub.family.batches import IGNORE, BatchSampler, encode_example
from mergehub.family.tokenizer import EOS_ID, decode


@pytest.mark.parametrize("name, word, target", [
    ("reverse", "abcd", "dcba"),
    ("reverse", "abcdefg", "gfedcba"),
    ("sort", "dbcaa", "aabcd"),
    ("caesar", "abxyz", "deabc"),
    ("swap", "abcdef", "badcfe"),
    ("swap", "abcde", "badce"),
])
def test_transforms(name, word, target):
    task = tasks.get_task(name)
    assert task.prompt(word) == f"{name}:{word}="
    assert task.target(word) == target


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="reverse, sort, caesar, swap"):
        tasks.get_task("upper")


def test_eval_words_are_distinct_valid_and_stable():
    seen = set()
    for name in tasks.TASK_NAMES:
        words = tasks.eval_words(name)
        assert len(words) == tasks.EVAL_WORDS_PER_TASK == len(set(words))
        assert all(4 <= len(w) <= 7 and w.isalpha() and w.islower() for w in words)
        assert not seen & set(words)  # no word is evaluated in two tasks
        seen |= set(words)
    assert tasks.held_out_words() == frozenset(seen)


def test_training_never_samples_a_held_out_word():
    held_out = tasks.held_out_words()
    assert not held_out & set(tasks.sample_words(random.Random(1), 20000, held_out))
    # a word the stream would draw is skipped when it is held out
    first = tasks.sample_words(random.Random(7), 3, frozenset())
    again = tasks.sample_words(random.Random(7), 3, frozenset(first[:1]))
    assert again[:2] == first[1:3]


def test_committed_eval_files_match_the_generator():
    for name in tasks.TASK_NAMES:
        path = tasks.DATA_DIR / f"{name}.jsonl"
        assert path.read_text() == tasks.eval_file_text(name), "regenerate with tasks.write_eval_files()"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == 200
        assert all(r["target"] == tasks.get_task(name).target(r["prompt"][len(name) + 1:-1]) for r in records)


def test_builtin_tasks_shape_and_loadable():
    from mergehub.scoring import load_task

    assert [t["name"] for t in tasks.BUILTIN_TASKS] == ["reverse", "sort", "caesar", "swap"]
    for spec in tasks.BUILTIN_TASKS:
        assert set(spec) == {"name", "path", "kind", "settings", "description"}
        assert spec["kind"] == "generate" and spec["path"].is_file() and spec["description"]
        assert spec["settings"] == {"max_new_tokens": 10, "stop": "\n"}
        task = load_task(spec["path"], name=spec["name"], kind="auto", settings=spec["settings"])
        assert task.kind == "generate" and len(task.examples) == 200
        # a target and its EOS fit in the generation budget
        assert max(len(e["target"]) for e in task.examples) + 1 <= spec["settings"]["max_new_tokens"]


def test_training_sequence_is_prompt_target_eos_with_loss_on_the_answer_only():
    ids, labels = encode_example("reverse", "abcd")
    assert decode(ids) == "reverse:abcd=dcba" and ids[-1] == EOS_ID
    answer = [y for y in labels if y != IGNORE]
    assert decode(answer) == "dcba" and answer[-1] == EOS_ID
    assert labels[:len("reverse:abcd=")] == [IGNORE] * len("reverse:abcd=")


def test_expert_batches_replay_the_even_mix():
    sampler = BatchSampler(random.Random(0), 64, focus="sort", replay_fraction=0.25)
    names = sampler._task_names()
    assert len(names) == 64 and names.count("sort") == 48 + 4
    assert all(names[:16].count(t) == 4 for t in tasks.TASK_NAMES)
    ids, labels = sampler.next_batch()
    assert ids.shape == labels.shape and ids.shape[0] == 64
