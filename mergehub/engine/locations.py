"""Where the block catalog lives: one rule for the ``mergehub`` command line and the web app.

The web app (``mergehub/registry/roots.py``, which reads the ``MERGEHUB_CATALOG`` setting) and
the command line use the same directory, so a merge from the command line, run with the web
app's environment, finds every entry the web app indexed (and the other way round):

1. ``$MERGEHUB_CATALOG``, when set;
2. else ``catalog/`` in the data directory, ``$MERGEHUB_DATA_DIR`` (the web app's data
   directory; the Docker image sets ``/data``);
3. else ``$XDG_CACHE_HOME/mergehub/catalog`` (``~/.cache/mergehub/catalog``): the command line
   with no web app.

Entries are keyed by the expert's and the base's resolved directories and the block size, and
checked against the files' size, mtime and inode (``catalog.py``), so a shared catalog is reused
as long as both sides name the same model directories and use the same block size
(``MERGEHUB_BLOCK_SIZE``).

No torch and no Django here: Django's settings and the command line's start-up import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CATALOG_ENV = "MERGEHUB_CATALOG"
DATA_DIR_ENV = "MERGEHUB_DATA_DIR"


def catalog_in(data_dir: Path | str) -> Path:
    """The catalog's place inside a data directory."""
    return Path(data_dir) / "catalog"


def default_catalog_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The catalog directory the environment names (rules 1-3 of the module docstring)."""
    if environ.get(CATALOG_ENV):
        return Path(environ[CATALOG_ENV]).expanduser()
    if environ.get(DATA_DIR_ENV):
        return catalog_in(Path(environ[DATA_DIR_ENV]).expanduser().resolve())
    cache = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mergehub" / "catalog"
