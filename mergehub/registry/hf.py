"""Hugging Face sources: snapshots downloaded into ``DATA_DIR/hf`` with huggingface_hub.

The offline cache is used first; ``HF_HUB_OFFLINE=1`` forbids any network access (a snapshot
that is not cached is then an error). Only the files a merge needs are fetched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mergehub.engine.errors import MergeHubError

from .roots import hf_cache_dir

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model",
                  "*.txt", "*.tiktoken", "*.py"]
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class HubError(MergeHubError):
    """A Hugging Face snapshot could not be found or downloaded."""


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def valid_repo_id(repo_id: str) -> bool:
    return bool(REPO_ID.match(repo_id or "")) and ".." not in repo_id


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot directory, without touching the network; None if it is not cached."""
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, cache_dir=hf_cache_dir(),
                                      allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, IncompleteSnapshotError, OSError):
        return None


def download(repo_id: str, revision: str | None) -> Path:
    """Fetch (or find in the cache) a snapshot; HubError with a one-line reason on failure."""
    where = f"{repo_id}@{revision or 'main'}"
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, cache_dir=hf_cache_dir(),
                                      allow_patterns=ALLOW_PATTERNS, local_files_only=offline()))
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
    except OSError as exc:
        raise HubError(f"{where}: could not store the download ({exc.strerror or exc}); check free "
                       "space in the data directory") from None
