"""Scoring an lm_eval task: lm-evaluation-harness runs it in a child process, offline.

A child process because lm-eval and the Hugging Face libraries read HF_HUB_OFFLINE and
HF_DATASETS_OFFLINE when they are first imported (this process may have imported them already),
lm-eval reconfigures logging and progress bars globally, and a child can be stopped at once when
the caller cancels. lm-eval loads the model itself (``model="hf"``, ``add_bos_token=True``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mergehub.engine.api import Cancelled

from . import lm_eval_yaml
from .errors import TaskError
from .scorers import Scored
from .stats import Z95, wilson_interval
from .tasks import Task

POLL_SECONDS = 0.1


def _config(task: Task) -> dict:
    path = Path(task.path)
    return lm_eval_yaml.parse_yaml(path.read_text(encoding="utf-8"), path)


def example_count(task: Task) -> int:
    """Examples in the task's test split, counted as non-blank lines of its JSON Lines data files
    (0 when they are not JSON Lines); used for progress only."""
    config = _config(task)
    names = (config.get("dataset_kwargs") or {}).get("data_files")
    split = config.get("test_split")
    if isinstance(names, dict) and split in names:
        config = {**config, "dataset_kwargs": {"data_files": names[split]}}
    count = 0
    for file in lm_eval_yaml.data_files(config, Path(task.path)):
        if file.suffix in (".jsonl", ".json"):
            with open(file, "rb") as f:
                count += sum(1 for line in f if line.strip())
    return count


def _interval(score: float, values: list, stderr: float | None) -> tuple[float, float]:
    """Wilson for 0/1 metrics, else score ± 1.96 stderr when lm-eval gave one, else no width."""
    if values and all(v in (0.0, 1.0) for v in values):
        return wilson_interval(int(sum(values)), len(values))
    if stderr is not None:
        return score - Z95 * stderr, score + Z95 * stderr
    return score, score


def _check_unchanged(task: Task) -> None:
    """The YAML and its data files still hash to the content hash the task was loaded with."""
    from .tasks import load_task

    if load_task(task.path, kind="lm_eval", settings=task.settings).content_hash != task.content_hash:
        raise TaskError(f"{task.path}: the task's files changed after it was loaded; load it again")


def _child_environment() -> dict:
    """Offline Hugging Face libraries, and this very mergehub importable from any directory."""
    import mergehub

    source_root = str(Path(mergehub.__file__).resolve().parent.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _wait(child: subprocess.Popen, check) -> None:
    while True:
        try:
            child.wait(timeout=POLL_SECONDS)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            check()
        except Cancelled:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise


def run_lm_eval(task: Task, model_dir: Path, device: str, batch_size: int, sample_size: int,
                limit: int | None, tracker) -> Scored:
    lm_eval_yaml.require_lm_eval(task.path)
    _check_unchanged(task)
    expected = example_count(task)
    spec = {"yaml": str(Path(task.path).resolve()), "lm_eval_task": _config(task)["task"],
            "metric": task.metric, "model_dir": str(model_dir.resolve()), "device": device,
            "batch_size": batch_size, "num_fewshot": task.settings["num_fewshot"], "limit": limit,
            "sample_size": sample_size}
    env = _child_environment()
    with tempfile.TemporaryDirectory(prefix="mergehub-lmeval-") as tmp:
        spec_file, result_file, log_file = (Path(tmp) / n for n in ("spec.json", "result.json", "child.log"))
        spec_file.write_text(json.dumps(spec))
        with open(log_file, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "mergehub.scoring.lm_eval_child", str(spec_file),
                                      str(result_file)], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
            _wait(child, tracker.check)
        if not result_file.exists():
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise TaskError(f"{task.path}: lm-eval stopped with status {child.returncode} ({tail[0]})")
        result = json.loads(result_file.read_text())
    if "error" in result:
        raise TaskError(f"{task.path}: lm-eval could not run the task: {result['error']}")
    score = result["score"]
    if score is None:
        raise TaskError(f"{task.path}: lm-eval reported no number for {task.metric}; pick another metric")
    values = [v for v in result["values"] if v is not None]
    low, high = _interval(score, values, result["stderr"])
    tracker.advance(min(expected, limit) if limit is not None else expected)
    return Scored(n=len(result["values"]), score=score, ci_low=low, ci_high=high, samples=result["samples"])
