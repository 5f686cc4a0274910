"""A succeeded run's published output, read without following links and never whole.

The files that may leave the server are exactly the regular files at the top of the run's
output directory, ``DATA_DIR/teams/<slug>/outputs/run-<id>`` (the engine publishes a flat
Hugging Face model directory: weights, a sharded model's index, the base's config and tokenizer
files, ``mergehub_manifest.json``). The directory is reached from the team's ``outputs/``
folder one component at a time with ``O_NOFOLLOW`` (registry/pinning.py's ``open_from_root``),
and each file is opened from that directory's descriptor with ``O_NOFOLLOW`` and checked to be
a regular file with ``fstat``: a link, a subdirectory, a hidden file or a name that is not
UTF-8 is never listed, and a name that is not listed is never opened. The run's stored
``output_path`` must be that very directory (a run whose output lives anywhere else is not
served).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mergehub.engine import api as engine
from mergehub.engine.api import MergeHubError
from mergehub.registry.pinning import open_from_root
from mergehub.registry.roots import outputs_dir, run_output_dir, team_dir
from mergehub.runs.models import MergeRun

INDEX_SUFFIX = ".safetensors.index.json"


class ModelUnavailable(MergeHubError):
    """The run has no merged model to hand out (not succeeded, or its output is gone)."""


class UnknownFile(MergeHubError):
    """A name that is not one of the run's published files."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int
    kind: str  # "weights", "index", "manifest" or "other" (config, tokenizer…)
    output_hash: str = ""  # the manifest's hash of a weight file (xxh3-128 or sha256), if recorded


def _kind(name: str, hashes: dict) -> str:
    if name == engine.MANIFEST_FILENAME:
        return "manifest"
    if name.endswith(INDEX_SUFFIX):
        return "index"
    if name in hashes or name.endswith(".safetensors"):
        return "weights"
    return "other"


def check_available(run: MergeRun) -> None:
    """ModelUnavailable, saying why, unless the run succeeded and recorded its output."""
    if run.status != MergeRun.Status.SUCCEEDED:
        raise ModelUnavailable(f"Run #{run.pk} is {run.get_status_display().lower()}; only a run that succeeded "
                               "has a merged model to download or push.")
    if not run.output_path:
        raise ModelUnavailable(f"Run #{run.pk} recorded no output directory; retry the run to merge it again.")


def _gone(run: MergeRun) -> ModelUnavailable:
    return ModelUnavailable(f"Run #{run.pk}'s merged model is not on disk any more (it was moved or deleted from "
                            "the team's outputs folder); retry the run to merge it again.")


@contextmanager
def output_directory(run: MergeRun) -> Iterator[int]:
    """A descriptor of the run's output directory, reached from the team's ``outputs/`` folder
    without following any link; ModelUnavailable if the run has no such directory."""
    check_available(run)
    team_real = Path(os.path.realpath(team_dir(run.team)))
    root = Path(os.path.realpath(outputs_dir(run.team)))
    expected = root / run_output_dir(run).name
    # outputs/ itself may not be a link out of the team's folder, and the run's recorded output
    # must be its own run-<id> directory there (realpath: a recorded path that is a link counts
    # as where it leads)
    if root != team_real / "outputs" or Path(os.path.realpath(run.output_path)) != expected:
        raise _gone(run)
    try:
        fd = open_from_root(root, expected, directory=True)
    except (OSError, ValueError):
        raise _gone(run) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _listable(name: str) -> bool:
    if name.startswith(".") or "/" in name or "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate-escaped byte: it could not be named in a URL or a repo
        return False
    return True


def _list(run: MergeRun, dir_fd: int) -> list[ModelFile]:
    hashes = ((run.manifest or {}).get("outputs") or {}).get("files") or {}
    files = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if not _listable(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            files.append(ModelFile(entry.name, st.st_size, _kind(entry.name, hashes),
                                   str(hashes.get(entry.name) or "")))
    return sorted(files, key=lambda f: ({"weights": 0, "index": 1, "other": 2, "manifest": 3}[f.kind], f.name))


def published_files(run: MergeRun) -> list[ModelFile]:
    """The run's published files, weights first; ModelUnavailable if there are none to hand out."""
    with output_directory(run) as dir_fd:
        files = _list(run, dir_fd)
    if not files:
        raise _gone(run)
    return files


def open_at(dir_fd: int, name: str) -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the regular file ``name`` in the directory ``dir_fd``, opened
    without following a link; UnknownFile if it is a link, not a regular file, or gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                     dir_fd=dir_fd)
    except OSError:
        raise UnknownFile(f"{name} is not one of this run's published files.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnknownFile(f"{name} is not one of this run's published files.")
    os.set_blocking(fd, True)
    return fd, st


def open_published_file(run: MergeRun, name: str):
    """(binary file object, ModelFile) for one listed file; UnknownFile for any other name
    (checked against the listing before anything is opened by that name)."""
    with output_directory(run) as dir_fd:
        listed = {f.name: f for f in _list(run, dir_fd)}
        if name not in listed:
            raise UnknownFile(f"{name!r} is not one of this run's published files.")
        fd, _st = open_at(dir_fd, name)
    return os.fdopen(fd, "rb"), listed[name]


@contextmanager
def opened_files(run: MergeRun) -> Iterator[tuple[list[ModelFile], int]]:
    """(the listing, the directory's descriptor) for callers that open every file in turn
    (the archive, the push) with ``open_at``: the directory stays the one that was listed."""
    with output_directory(run) as dir_fd:
        files = _list(run, dir_fd)
        if not files:
            raise _gone(run)
        yield files, dir_fd
