"""Hugging Face sources: snapshots downloaded with huggingface_hub into the team's own cache
(``DATA_DIR/teams/<slug>/hf``, given by the caller as ``cache_dir``).

The offline cache is used first; ``HF_HUB_OFFLINE=1`` forbids any network access (a snapshot
that is not cached is then an error). Only the files a merge needs are fetched.

Nothing from the user reaches huggingface_hub unchecked: the repo id must pass the Hub's own
rules and ours, and the revision must be a branch or tag name (git's ref-name rules, no ``..``)
or a 40-hex commit. huggingface_hub turns a branch name into a path by reading
``refs/<revision>`` in the cache and joining that file's *content* under ``snapshots/``, and it
follows whatever links it finds there; so whatever path it returns is resolved (``realpath``)
and must be a snapshot folder of that repo in that team's cache, and every file in the
snapshot (HF links them to ``../../blobs/``) must resolve inside that repo's cache folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from mergehub.engine.api import MergeHubError

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model",
                  "*.txt", "*.tiktoken", "*.py"]
# Ours, on top of the Hub's validator (whose ``\w`` also admits non-ASCII letters): ASCII only,
# "name" or "owner/name", each part starting with a letter or digit.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
MAX_REVISION_CHARS = 200
REVISION_FORBIDDEN = set(" ~^:?*[\\")


class HubError(MergeHubError):
    """A Hugging Face snapshot could not be found or downloaded, or is not safe to use."""


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# --- input validation ----------------------------------------------------------------------

def valid_repo_id(repo_id: str | None) -> bool:
    """``owner/name`` or ``name`` under the Hub's rules (huggingface_hub's validator) and ours."""
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        return False
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def valid_revision(revision: str | None) -> bool:
    """Empty/None (the default branch), a 40-hex commit, or a branch/tag name by git's
    check-ref-format rules (``refs/pr/1`` style names included)."""
    if revision is None or revision == "":
        return True
    if not isinstance(revision, str) or len(revision) > MAX_REVISION_CHARS:
        return False
    if COMMIT.fullmatch(revision):
        return True
    if not revision.isprintable() or REVISION_FORBIDDEN & set(revision):
        return False  # control and other unprintable characters, space, ~^:?*[\
    if ".." in revision or "@{" in revision or revision == "@":
        return False
    if revision.startswith(("/", "-")) or revision.endswith(("/", ".")) or "//" in revision:
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock")
               for part in revision.split("/"))


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision or 'main'}"


def _check_input(repo_id: str, revision: str | None) -> None:
    if not valid_repo_id(repo_id):
        raise HubError(f"{str(repo_id)[:100]!r} is not a Hugging Face repo id; write it as owner/name "
                       "(letters, digits, '-', '_' and '.')")
    if not valid_revision(revision):
        raise HubError(f"{str(revision)[:100]!r} is not a valid revision; give a branch or tag name "
                       "(such as main or v1.0, without '..') or a 40-character commit hash")


# --- containment of what huggingface_hub returns -------------------------------------------

def repo_cache_dir(repo_id: str, *, cache_dir: Path | str) -> Path:
    """The folder huggingface_hub keeps ``repo_id`` in, inside ``cache_dir`` (links in
    ``cache_dir`` itself resolved, none below it)."""
    return Path(os.path.realpath(cache_dir)) / ("models--" + repo_id.replace("/", "--"))


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _contained_snapshot(returned: str | os.PathLike, repo_id: str, revision: str | None,
                        cache_dir: Path | str) -> Path:
    """``returned`` resolved, if it is a snapshot folder of ``repo_id`` in ``cache_dir`` whose
    files all resolve inside that repo's cache folder; HubError otherwise. The message names
    only the team's own cache folder, never where a link leads."""
    repo = repo_cache_dir(repo_id, cache_dir=cache_dir)
    snapshots, blobs = repo / "snapshots", repo / "blobs"
    tampered = (f"the cache is corrupt or tampered: delete {repo} and download "
                f"{_where(repo_id, revision)} again")
    real = Path(os.path.realpath(returned))
    if real.parent != snapshots or not real.is_dir():
        raise HubError(f"{_where(repo_id, revision)} resolves outside this team's Hub cache; {tampered}")
    for folder, dirs, files in os.walk(real, followlinks=False):
        for name in (*dirs, *files):
            entry = Path(folder) / name
            target = Path(os.path.realpath(entry))
            if not (_inside(target, real) or _inside(target, blobs)):
                raise HubError(f"{_where(repo_id, revision)}: {entry.relative_to(real)} links outside "
                               f"this team's Hub cache; {tampered}")
    return real


# --- the two entry points --------------------------------------------------------------------

def cached_snapshot(repo_id: str, revision: str | None, *, cache_dir: Path | str) -> Path | None:
    """The cached snapshot directory in ``cache_dir`` (the team's Hub cache), resolved, without
    touching the network; None if it is not cached. HubError if the repo id or revision is
    invalid, or the cache leads outside itself."""
    _check_input(repo_id, revision)
    try:
        returned = snapshot_download(repo_id, revision=revision or None, cache_dir=cache_dir,
                                     allow_patterns=ALLOW_PATTERNS, local_files_only=True)
    except (LocalEntryNotFoundError, IncompleteSnapshotError, OSError):
        return None
    except HFValidationError:
        raise HubError(f"{_where(repo_id, revision)}: huggingface_hub refused the repo id or "
                       "revision; check both") from None
    return _contained_snapshot(returned, repo_id, revision, cache_dir)


def download(repo_id: str, revision: str | None, *, cache_dir: Path | str) -> Path:
    """Fetch (or find in ``cache_dir``, the team's Hub cache) a snapshot and return its resolved
    directory; HubError with a one-line reason on failure, invalid input or a cache that leads
    outside itself."""
    _check_input(repo_id, revision)
    where = _where(repo_id, revision)
    try:
        returned = snapshot_download(repo_id, revision=revision or None, cache_dir=cache_dir,
                                     allow_patterns=ALLOW_PATTERNS, local_files_only=offline())
    except RevisionNotFoundError:
        raise HubError(f"{where}: no such revision on the Hub; check the branch, tag or commit") from None
    except GatedRepoError:
        raise HubError(f"{where}: the repository is gated; accept its terms and set HF_TOKEN for "
                       "the worker") from None
    except RepositoryNotFoundError:
        raise HubError(f"{where}: no such repository (or it is private; set HF_TOKEN for the "
                       "worker)") from None
    except (LocalEntryNotFoundError, IncompleteSnapshotError):
        if offline():
            raise HubError(f"{where} is not in the offline cache and HF_HUB_OFFLINE is set; download "
                           "it on a connected machine or unset HF_HUB_OFFLINE") from None
        raise HubError(f"{where}: the Hub could not be reached and the snapshot is not cached; "
                       "try again later") from None
    except HfHubHTTPError as exc:
        raise HubError(f"{where}: the Hub answered {exc.__class__.__name__}; try again later") from None
    except HFValidationError:
        raise HubError(f"{where}: huggingface_hub refused the repo id or revision; check both") from None
    except OSError as exc:
        raise HubError(f"{where}: could not store the download ({exc.strerror or exc}); check free "
                       "space in the data directory") from None
    return _contained_snapshot(returned, repo_id, revision, cache_dir)
