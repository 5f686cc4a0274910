"""Where MergeHub keeps its files, and the one gate local checkpoint paths go through.

Every team has its own folder, ``DATA_DIR/teams/<slug>/``, holding its default checkpoint root
(``checkpoints/``), its merged models (``outputs/run-<id>``, ``outputs/sweep-<id>``), its
Hugging Face cache (``hf/``) and its uploaded evaluation tasks (``tasks/``). A team may
register checkpoints only under its own roots: that default folder, the roots a site admin
gave it (``StorageRoot`` rows, in the Django admin), and the roots a site admin shares with
every team (``MERGEHUB_CHECKPOINT_ROOTS``, empty by default). Whatever the
roots say, another team's folder, the catalog and the database are never registrable.

Paths are resolved once (symlinks followed, ``..`` removed) and the result must lie inside a
root; a path that does not is refused with one message that says nothing about whether it
exists or where a link leads. The block catalog (``DATA_DIR/catalog``, or ``MERGEHUB_CATALOG``)
is shared by every team and with the command line: it holds no weights, and wherever it lies it
is never registrable.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from mergehub.engine.api import default_catalog_dir  # torch-free

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_NAME_BYTES = 255  # NAME_MAX


def data_dir() -> Path:
    return Path(settings.MERGEHUB_DATA_DIR)


def catalog_dir() -> Path:
    """The block catalog: the MERGEHUB_CATALOG setting, else DATA_DIR/catalog. The command line
    reads the same environment variables the same way (mergehub/engine/locations.py), so it
    reuses every entry the web app indexed."""
    return default_catalog_dir({"MERGEHUB_CATALOG": settings.MERGEHUB_CATALOG,
                                "MERGEHUB_DATA_DIR": str(data_dir())})


def teams_dir() -> Path:
    return data_dir() / "teams"


def team_dir(team) -> Path:
    return teams_dir() / team.slug


def team_checkpoints_dir(team) -> Path:
    """The team's default checkpoint root (created when first needed)."""
    return team_dir(team) / "checkpoints"


def outputs_dir(team) -> Path:
    return team_dir(team) / "outputs"


def hf_cache_dir(team) -> Path:
    return team_dir(team) / "hf"


def run_output_dir(run) -> Path:
    return outputs_dir(run.team) / f"run-{run.pk}"


def sweep_output_dir(sweep) -> Path:
    """Where a sweep writes each budget's merge (``budget-<i>``) when it evaluates them."""
    return outputs_dir(sweep.team) / f"sweep-{sweep.pk}"


def tasks_dir(team) -> Path:
    """Uploaded evaluation task files, named by their content hash."""
    return team_dir(team) / "tasks"


def block_size() -> int | None:
    """Block size for indexing and planning; None lets the engine use its default."""
    return int(settings.MERGEHUB_BLOCK_SIZE) or None


def _real(path) -> Path:
    return Path(os.path.realpath(path))


def shared_roots() -> list[Path]:
    """Roots a site admin shares with every team (MERGEHUB_CHECKPOINT_ROOTS), links resolved."""
    return [_real(root) for root in settings.MERGEHUB_CHECKPOINT_ROOTS]


def checkpoint_roots(team) -> list[Path]:
    """The roots ``team`` may register local checkpoints from, links resolved."""
    own = team_checkpoints_dir(team)
    own.mkdir(parents=True, exist_ok=True)
    given = [_real(p) for p in team.storage_roots.values_list("path", flat=True)]
    return [_real(own), *given, *shared_roots()]


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def allowed(real: Path, team) -> bool:
    """Is the resolved path ``real`` inside one of the team's roots and outside every other
    team's files? Of the data directory only the team's own folder is open (its checkpoints
    and its own merged models), never its Hub cache (Hub snapshots register as Hub sources)."""
    if _inside(real, _real(catalog_dir())):
        return False
    if _inside(real, _real(team_dir(team))):
        return not _inside(real, _real(hf_cache_dir(team)))
    if _inside(real, _real(data_dir())):
        return False
    return any(_inside(real, root) for root in checkpoint_roots(team))


def check_path_text(raw: str, field: str) -> str:
    """Reject what no file system would take, before touching it: empty, NUL, too long, and
    names that are not UTF-8 (a browser cannot send them; a script can)."""
    raw = (raw or "").strip()
    if not raw:
        raise ValidationError({field: "Enter the path of a checkpoint directory."})
    if "\x00" in raw:
        raise ValidationError({field: "The path contains a NUL character."})
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError({field: "The path is not valid UTF-8; rename the directory."}) from None
    if len(raw) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ValidationError({field: f"The path is too long (at most {MAX_PATH_CHARS} characters, "
                                      f"{MAX_NAME_BYTES} bytes a name)."})
    return raw


def _resolve_under_roots(raw: str, team, field: str, what: str) -> Path:
    """The real path ``raw`` names, if it lies under one of ``team``'s roots (and exists);
    ValidationError otherwise.

    The check is made on the fully resolved path (``os.path.realpath``), so ``root/link`` where
    ``link -> /elsewhere`` is refused even though its spelling is under the root. The refusal
    is the same whether the path exists, is a file or a link: it tells nothing about what lies
    outside the team's roots.
    """
    raw = check_path_text(raw, field)
    roots = checkpoint_roots(team)
    listed = ", ".join(str(r) for r in roots)
    given = Path(raw).expanduser()
    if not given.is_absolute():
        raise ValidationError({field: f"Enter an absolute path under one of your team's roots: {listed}."})
    try:
        real = _real(given)
    except (OSError, ValueError):
        real = None
    if real is None or not allowed(real, team):
        raise ValidationError({field: f"{raw} is not inside your team's checkpoint roots ({listed}); move "
                                      f"the {what} under one, or ask a site admin to add a root for "
                                      "your team."})
    if not real.exists():
        raise ValidationError({field: f"{raw}: no such {'directory' if what == 'checkpoint' else 'file'}; "
                                      "check the path."})
    return real


def resolve_checkpoint_dir(raw: str, team, field: str = "local_path") -> Path:
    """The real directory ``raw`` names, if it lies under one of ``team``'s roots;
    ValidationError otherwise (see _resolve_under_roots)."""
    real = _resolve_under_roots(raw, team, field, "checkpoint")
    if not real.is_dir():
        raise ValidationError({field: f"{raw.strip()} is a file; enter the checkpoint's directory "
                                      "(the one holding config.json and the .safetensors files)."})
    return real


def resolve_task_file(raw: str, team, field: str = "path") -> Path:
    """The real file ``raw`` names, if it lies under one of ``team``'s roots (an evaluation
    task file); ValidationError otherwise."""
    real = _resolve_under_roots(raw, team, field, "task file")
    if not real.is_file():
        raise ValidationError({field: f"{raw.strip()} is not a regular file; enter the task file's path."})
    return real


def hub_repo_dir(team, repo_id: str) -> Path:
    """The folder of one Hub repository in the team's cache (huggingface_hub's layout)."""
    return hf_cache_dir(team) / ("models--" + repo_id.replace("/", "--"))


def root_of(checkpoint) -> Path | None:
    """The root a registered checkpoint's files are pinned to: its repository's folder in the
    team's Hub cache, or the innermost of the team's roots holding its directory (None if no
    root holds it any more)."""
    if checkpoint.source == "hf":
        return _real(hub_repo_dir(checkpoint.team, checkpoint.hf_repo_id))
    path = Path(checkpoint.path)
    if _inside(path, _real(team_dir(checkpoint.team))):
        return _real(team_dir(checkpoint.team))
    holding = [root for root in checkpoint_roots(checkpoint.team) if _inside(path, root)]
    return max(holding, key=lambda root: len(root.parts)) if holding else None
