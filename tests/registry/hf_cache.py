"""Build a Hugging Face hub cache on disk the way huggingface_hub lays it out, for offline tests."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache_dir: Path, repo_id: str, source_dir: Path, revision: str = "main",
               commit: str = COMMIT) -> Path:
    """Copy ``source_dir``'s files into ``cache_dir`` as snapshot ``commit`` of ``repo_id``,
    with ``refs/<revision>`` pointing at it; return the snapshot directory."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(source_dir).iterdir():
        shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
