"""What ``mergehub remote`` prints about a run: its state in one line, the progress while it is
waited for (a tqdm bar on a terminal, plain lines otherwise) and the report once it is over.

Everything here reads the API's JSON (``GET /api/v1/runs/{id}/``, docs/api.md) as plain dicts,
and tolerates fields it does not find.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, TextIO

from mergehub.engine.api import binary_size  # pure Python: no torch

FINISHED = ("succeeded", "failed", "cancelled")


def size(n: float | None) -> str:
    """Bytes in binary units, as the web pages print them: 14336 → ``14.0 KiB``."""
    return "n/a" if n is None else binary_size(n)


def share(part: float | None, whole: float | None) -> str:
    return f"{100 * part / whole:.1f}%" if part is not None and whole else "n/a"


def planned(plan: dict) -> str:
    """``planned 48.0 KiB of 3.85 MiB (1.2%)`` from a plan or the metrics."""
    part, whole = plan.get("planned_expert_bytes"), plan.get("full_expert_bytes")
    return f"planned {size(part)} of {size(whole)} ({share(part, whole)})"


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO time of the API to another (None when either is missing)."""
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def state(job: dict) -> str:
    """``running (merge 45%)``, ``queued``, ``succeeded``; a cancel request is mentioned."""
    status, stage = job.get("status", "?"), job.get("stage") or ""
    if status == "running":
        where = f" ({stage} {100 * (job.get('progress') or 0):.0f}%)" if stage else ""
        asked = "; cancel requested" if job.get("cancel_requested") else ""
        return f"running{where}{asked}"
    return status


def status_lines(run: dict) -> list[str]:
    """``mergehub remote status``: a run's state, then its report when it is over."""
    if run.get("status") in FINISHED:
        return report_lines(run)
    lines = [f"run {run['id']} {state(run)}: {run.get('name') or run.get('method', '')}"]
    lines.append(f"method {run.get('method')}, budget {run.get('budget')}, seed {run.get('seed')}")
    plan = run.get("plan") or {}
    if plan.get("planned_expert_bytes") is not None:
        lines.append(f"expert bytes: {planned(plan)}")
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    return lines


def report_lines(run: dict) -> list[str]:
    """The report of a finished run: status and time, expert bytes planned and read (from storage,
    as the kernel counts them: what the page cache served is not read), the
    certificate and deviation when known, the output's path, the error, evaluation scores."""
    status, run_id = run.get("status"), run.get("id")
    took = seconds_between(run.get("started_at"), run.get("finished_at"))
    timing = f" in {took:.2f} s" if took is not None and status == "succeeded" else ""
    lines = [f"run {run_id} {status}{timing}: {run.get('name') or run.get('method', '')}"]
    if status == "failed":
        lines.append(f"error: {run.get('error') or 'no error was recorded'}")
    if status == "cancelled":
        lines.append("cancelled: nothing was published")
    metrics, plan = run.get("metrics") or {}, run.get("plan") or {}
    if metrics:
        read, requested = metrics.get("expert_bytes_read"), metrics.get("expert_bytes_requested") or 0
        cached = ""
        if read is not None and requested > read:
            cached = f" ({size(requested - read)} came from the page cache)"
        lines.append(f"expert bytes: {planned(metrics)}, read from storage {size(read)}{cached}; base read "
                     f"{size(metrics.get('base_bytes_read'))}; written {size(metrics.get('bytes_written'))}")
        if metrics.get("certificate") is not None:
            lines.append(f"certificate: ‖θ_A − θ_full‖₂ ≤ {metrics['certificate']:.6g}")
        deviation = metrics.get("deviation")
        if deviation:
            lines.append(f"deviation from the full-read merge: {deviation.get('update_relative', 0):.3e} of the "
                         f"update, {deviation.get('weight_relative', 0):.3e} of the weights")
        for warning in metrics.get("warnings") or []:
            lines.append(f"warning: {warning}")
    elif plan.get("planned_expert_bytes") is not None:
        lines.append(f"expert bytes: {planned(plan)}")
    if run.get("output_path"):
        lines.append(f"output: {run['output_path']}")
    lines.extend(evaluation_lines(run.get("evaluation")))
    return lines


def evaluation_lines(evaluation: dict | None) -> list[str]:
    """A run's evaluation (its ``evaluation`` field): each model's scores, and what the merge
    keeps of each expert's best score."""
    if not evaluation:
        return []
    job = evaluation.get("evaluation") or {}
    lines = [f"evaluation {job.get('id')} {job.get('status')}: {', '.join(evaluation.get('tasks') or [])}"]
    for model in evaluation.get("models") or []:
        scores = ", ".join(f"{s['task']} {s['metric']} {_score(s)}" for s in model.get("scores") or [])
        label, role = str(model.get("label")), str(model.get("role"))
        named = label if label.startswith(role) else f"{label} ({role})"  # "merge (run #5)", "llama-3 (base)"
        lines.append(f"  {named}: {scores or 'no scores yet'}")
    for kept in evaluation.get("kept") or []:
        if kept.get("share") is not None:
            lines.append(f"  the merge keeps {100 * kept['share']:.0f}% of {kept['expert']}'s score on {kept['task']}")
    return lines


def _score(score: dict) -> str:
    value = score.get("score")
    if value is None:
        return "n/a"
    if score.get("metric") == "perplexity":
        return f"{value:.2f}"
    return f"{value:.3f}" if 0 <= value <= 1 else f"{value:.4g}"


class ProgressView:
    """Shows a job's progress while it is waited for: on a terminal a tqdm bar per stage (as the
    other ``mergehub`` commands draw them), otherwise one line per status or stage and per 10%."""

    def __init__(self, stream: TextIO | None = None, terminal: bool | None = None):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.bar: Any = None
        self.key: tuple | None = None
        self.step = -1

    def update(self, label: str, job: dict) -> None:
        """``label``: what the job is ("run 12", "evaluation 3"); ``job``: its API JSON."""
        status, stage = job.get("status"), job.get("stage") or job.get("status")
        fraction = min(max(float(job.get("progress") or 0.0), 0.0), 1.0)
        key = (label, status, stage)
        if self.terminal:
            self._draw(key, f"{label} {stage}", fraction)
            return
        step = int(fraction * 10)
        if key != self.key or (status == "running" and step > self.step):
            self.key, self.step = key, step
            self.note(f"{label}: {state(job)}")

    def _draw(self, key: tuple, description: str, fraction: float) -> None:
        from tqdm import tqdm

        if key != self.key:
            self.close()
            self.key = key
            self.bar = tqdm(total=100, desc=description, unit="%", leave=False, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]")
        self.bar.n = round(100 * fraction, 1)
        self.bar.refresh()

    def note(self, text: str) -> None:
        """A line on the progress stream (above the bar on a terminal)."""
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
