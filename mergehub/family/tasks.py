"""The demo family's four synthetic tasks, word sampling and the held-out evaluation split.

Every task maps a word of 4–7 lowercase letters to another string of the same letters:

    reverse:abcde=   ->  edcba       (the letters backwards)
    sort:dbca=       ->  abcd        (the letters in alphabetical order)
    caesar:abxyz=    ->  deabc       (each letter shifted 3 places, z wraps to c)
    swap:abcdefg=    ->  badcfeg     (adjacent pairs swapped; an odd last letter stays)

A model sees the prompt, then must write the target and end it with the tokenizer's EOS token
(training sequences are ``prompt + target + EOS``). The evaluation words (200 per task,
``EVAL_WORDS_PER_TASK``) come from a fixed seed of their own, independent of the family's seed,
and training never samples one of them (``sample_words`` rejects them).
"""

from __future__ import annotations

import functools
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LETTERS = string.ascii_lowercase
MIN_LEN, MAX_LEN = 4, 7
EVAL_WORDS_PER_TASK = 200
EVAL_SEED = 20240601  # fixed: the committed evaluation files never change with the family seed
CAESAR_SHIFT = 3


def _reverse(word: str) -> str:
    return word[::-1]


def _sort(word: str) -> str:
    return "".join(sorted(word))


def _caesar(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + CAESAR_SHIFT) % 26] for c in word)


def _swap(word: str) -> str:
    pairs = [word[i:i + 2][::-1] for i in range(0, len(word), 2)]
    return "".join(pairs)


@dataclass(frozen=True)
class Task:
    name: str
    transform: Callable[[str], str]
    description: str

    def prompt(self, word: str) -> str:
        return f"{self.name}:{word}="

    def target(self, word: str) -> str:
        return self.transform(word)


TASKS: tuple[Task, ...] = (
    Task("reverse", _reverse, "write the word's letters backwards (abcd= -> dcba)"),
    Task("sort", _sort, "write the word's letters in alphabetical order (dbca= -> abcd)"),
    Task("caesar", _caesar, "shift every letter 3 places along the alphabet, z wraps to c (abz= -> dec)"),
    Task("swap", _swap, "swap adjacent pairs of letters, an odd last letter stays (abcde= -> badce)"),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
TASKS_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def get_task(name: str) -> Task:
    try:
        return TASKS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; the family's tasks are {', '.join(TASK_NAMES)}") from None


def random_word(rng: random.Random) -> str:
    length = rng.randint(MIN_LEN, MAX_LEN)
    return "".join(rng.choice(LETTERS) for _ in range(length))


@functools.cache
def _all_eval_words() -> dict[str, tuple[str, ...]]:
    taken: set[str] = set()
    out: dict[str, tuple[str, ...]] = {}
    for name in TASK_NAMES:  # in a fixed order, so each task's list is stable
        rng = random.Random(f"{EVAL_SEED}:{name}")
        words: list[str] = []
        while len(words) < EVAL_WORDS_PER_TASK:
            word = random_word(rng)
            if word not in taken:
                taken.add(word)
                words.append(word)
        out[name] = tuple(words)
    return out


def eval_words(task_name: str) -> list[str]:
    """The 200 held-out words of one task: distinct, and distinct from every other task's."""
    get_task(task_name)
    return list(_all_eval_words()[task_name])


@functools.cache
def held_out_words() -> frozenset[str]:
    """Every evaluation word of every task: training never sees one."""
    return frozenset(w for words in _all_eval_words().values() for w in words)


def sample_words(rng: random.Random, n: int, exclude: frozenset[str]) -> list[str]:
    """``n`` random training words (repeats allowed), none of them in ``exclude``."""
    words: list[str] = []
    while len(words) < n:
        word = random_word(rng)
        if word not in exclude:
            words.append(word)
    return words


def eval_examples(task_name: str) -> list[dict[str, str]]:
    """The held-out examples of one task as ``{"prompt", "target"}`` records."""
    task = get_task(task_name)
    return [{"prompt": task.prompt(w), "target": task.target(w)} for w in eval_words(task_name)]


# The committed evaluation files (regenerate with ``write_eval_files(DATA_DIR)``; a test checks
# that the committed bytes equal what ``eval_file_text`` produces).
DATA_DIR = Path(__file__).resolve().parent / "data"
EVAL_SETTINGS = {"max_new_tokens": 10, "stop": "\n"}


def eval_file_text(task_name: str) -> str:
    """The JSONL text of one task's evaluation file: one ``{"prompt", "target"}`` per line."""
    return "".join(json.dumps(e) + "\n" for e in eval_examples(task_name))


def write_eval_files(directory: Path = DATA_DIR) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TASK_NAMES:
        path = directory / f"{name}.jsonl"
        path.write_text(eval_file_text(name))
        paths.append(path)
    return paths


# What the web app registers as the family's built-in tasks: exact match after greedy decoding
# of at most 10 new tokens, stopped at EOS or a newline (a target is at most 7 letters + EOS).
BUILTIN_TASKS: list[dict] = [
    {"name": t.name, "path": DATA_DIR / f"{t.name}.jsonl", "kind": "generate",
     "settings": dict(EVAL_SETTINGS), "description": t.description}
    for t in TASKS
]
