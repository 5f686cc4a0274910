"""Build a Hugging Face hub cache on disk the way huggingface_hub lays it out, for offline tests.

Layout (``cache_dir`` is a team's Hub cache, ``DATA_DIR/teams/<slug>/hf`` in the app)::

    models--owner--name/
        refs/<revision>            file holding the commit hash (refs/refs/pr/3 for "refs/pr/3")
        snapshots/<commit>/<file>  the files, or links to ../../blobs/<hash> (``link_blobs``)
        blobs/<hash>               the file contents, when linked
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def repo_dir(cache_dir: Path, repo_id: str) -> Path:
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def fill_cache(cache_dir: Path, repo_id: str, source_dir: Path, revision: str = "main",
               commit: str = COMMIT, link_blobs: bool = False) -> Path:
    """Copy ``source_dir``'s files into ``cache_dir`` as snapshot ``commit`` of ``repo_id``,
    with ``refs/<revision>`` pointing at it; return the snapshot directory. With
    ``link_blobs`` the files go to ``blobs/`` and the snapshot holds relative links to them,
    as huggingface_hub does on Linux."""
    repo = repo_dir(cache_dir, repo_id)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(source_dir).iterdir():
        if link_blobs:
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, blob)
            os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / f.name)
        else:
            shutil.copy2(f, snapshot / f.name)
    write_ref(cache_dir, repo_id, revision, commit)
    return snapshot


def write_ref(cache_dir: Path, repo_id: str, revision: str, content: str) -> Path:
    """Write ``refs/<revision>`` with ``content`` verbatim (a commit hash, or anything else)."""
    ref = repo_dir(cache_dir, repo_id) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(content)
    return ref
