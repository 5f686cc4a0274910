"""The benchmark's own mergekit 0.1.5 install, in a venv kept apart from MergeHub's.

torch goes in first (``torch==2.13.0``: pip's configured wheel sources give the CPU build),
then mergekit with the repository's constraints so it cannot pull another torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mergehub.engine.errors import MergeHubError

MERGEKIT_VERSION = "0.1.5"
TORCH_VERSION = "2.13.0"


class BenchSetupError(MergeHubError):
    """A tool the benchmark needs could not be installed or found."""


def mergekit_yaml(venv: Path, constraints: Path) -> Path:
    """Path of ``mergekit-yaml`` in ``venv``, creating the venv and installing it if missing."""
    exe = venv / "bin" / "mergekit-yaml"
    if exe.is_file():
        return exe
    print(f"installing mergekit {MERGEKIT_VERSION} into {venv} (one-off)", file=sys.stderr, flush=True)
    python = venv / "bin" / "python"
    steps = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append([str(python), "-m", "pip", "install", f"torch=={TORCH_VERSION}"])
    steps.append([str(python), "-m", "pip", "install", "-c", str(constraints),
                  f"mergekit=={MERGEKIT_VERSION}"])
    for step in steps:
        if subprocess.run(step).returncode != 0:
            raise BenchSetupError(f"`{' '.join(step)}` failed: fix the error above or pass "
                                  "--mergekit-venv pointing at a venv with mergekit installed")
    if not exe.is_file():
        raise BenchSetupError(f"mergekit installed but {exe} is missing: check the venv {venv}")
    return exe


def mergekit_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('mergekit'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"
