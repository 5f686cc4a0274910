"""The model card (README.md) pushed with a merged model: what was merged, how, at what I/O
cost, how far from the full-read merge, how it scored, from which exact input files, by which
MergeHub.

``card_inputs(run)`` reads what the card needs from the database; ``render(inputs)`` is a pure
function of it. The YAML front matter is written by ``yaml.safe_dump`` (names the team typed
cannot break it); everything else is Markdown, with table cells and code fences made safe for
whatever a name contains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

import mergehub
from mergehub.evaluation.selectors import Benchmark, benchmark_for_run
from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun
from mergehub.runs.yaml_config import config_yaml
from mergehub.ui.formatting import human_bytes

SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROJECT = "MergeHub"


@dataclass
class InputModel:
    role: str  # "base" or "expert"
    name: str  # the MergeHub checkpoint name ("(deleted)" once it left the registry)
    hub_id: str  # "owner/name@revision" for a Hub source, "" for a local one
    files: dict[str, str]  # {file name: sha256}


@dataclass
class CardInputs:
    run: MergeRun
    config_yaml: str
    benchmark: Benchmark
    inputs: list[InputModel] = field(default_factory=list)
    version: str = mergehub.__version__


def _hashes(recorded: dict, checkpoint: Checkpoint | None) -> dict[str, str]:
    """{file: sha256}: the manifest's (what the merge read), else the checkpoint's index."""
    stored = (checkpoint.file_hashes if checkpoint is not None else None) or {}
    out = {}
    for name in sorted(set(recorded) | set(stored)):
        value = recorded.get(name)
        value = value if isinstance(value, str) and SHA256.fullmatch(value) else stored.get(name)
        if isinstance(value, str) and value:
            out[name] = value
    return out


def _input_model(role: str, entry: dict, by_path: dict, checkpoints: dict) -> InputModel:
    checkpoint = checkpoints.get(by_path.get(entry.get("path")))
    hub_id = ""
    if checkpoint is not None and checkpoint.source == Checkpoint.Source.HF and checkpoint.hf_repo_id:
        hub_id = checkpoint.hf_repo_id + (f"@{checkpoint.hf_revision}" if checkpoint.hf_revision else "")
    name = checkpoint.name if checkpoint is not None else str(entry.get("name") or "(deleted)")
    return InputModel(role, name, hub_id, _hashes(entry.get("files") or {}, checkpoint))


def card_inputs(run: MergeRun) -> CardInputs:
    """What the card of ``run`` says, read from the database (the caller checked access)."""
    by_path = {path: pk for path, pk in ((run.config or {}).get("checkpoint_ids") or {}).items()}
    checkpoints = {c.pk: c for c in Checkpoint.objects.filter(team=run.team, pk__in=list(by_path.values()))}
    recorded = (run.manifest or {}).get("inputs") or {}
    inputs = []
    if recorded.get("base"):
        inputs.append(_input_model("base", recorded["base"], by_path, checkpoints))
    for entry in recorded.get("models") or []:
        inputs.append(_input_model("expert", entry, by_path, checkpoints))
    return CardInputs(run=run, config_yaml=config_yaml(run, model_refs=_public_refs(by_path, checkpoints)),
                      benchmark=benchmark_for_run(run), inputs=inputs)


def _public_refs(by_path: dict, checkpoints: dict) -> dict[str, str]:
    """{server directory: what the card's YAML names instead}: a Hub input's id, a local one's
    checkpoint name. The server's paths stay on the server."""
    refs = {}
    for path, pk in by_path.items():
        checkpoint = checkpoints.get(pk)
        if checkpoint is None:
            refs[path] = "(deleted checkpoint)"
        elif checkpoint.source == Checkpoint.Source.HF and checkpoint.hf_repo_id:
            refs[path] = checkpoint.hf_repo_id
        else:
            refs[path] = checkpoint.name
    return refs


# --- Markdown helpers -------------------------------------------------------------------------

def cell(value: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("\\", "\\\\").replace("|", "\\|") or " "


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _bytes(n) -> str:
    return "—" if n is None else f"{human_bytes(n)} ({int(n):,} bytes)"


def _number(value, digits: int = 4) -> str:
    return "—" if value is None else f"{float(value):.{digits}g}"


# --- the card ---------------------------------------------------------------------------------

def front_matter(card: CardInputs) -> dict:
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["mergehub", "merge"]}
    hub_ids = [m.hub_id.split("@", 1)[0] for m in card.inputs if m.hub_id]
    if hub_ids:  # the Hub takes model ids here; local checkpoints are named in the card instead
        meta["base_model"] = list(dict.fromkeys(hub_ids))
    return meta


def _merge_section(run: MergeRun) -> list[str]:
    metrics = run.metrics or {}
    deviation = metrics.get("deviation")
    if isinstance(deviation, dict) and deviation:
        measured = (f"{_number(deviation.get('update_relative'), 3)} relative to the merged update, "
                    f"{_number(deviation.get('weight_relative'), 3)} relative to the weights (measured: the "
                    "blocks the plan left out were read to compare)")
    else:
        measured = "not measured (the run did not enable “measure deviation”)"
    certificate = metrics.get("certificate")
    return [
        "## How it was merged", "",
        f"- **Method:** `{cell(run.method)}`",
        f"- **Budget:** `{cell(run.budget)}` as typed, {_bytes(metrics.get('budget_bytes'))} of the "
        f"{_bytes(metrics.get('full_expert_bytes'))} a full-read merge reads from the experts",
        f"- **I/O saved:** {_bytes(run.bytes_saved)} of expert bytes never read; expert bytes requested "
        f"{_bytes(metrics.get('expert_bytes_requested'))}, read from storage {_bytes(metrics.get('expert_bytes_read'))}",
        f"- **Deviation from the full-read merge:** {measured}",
        "- **Certificate:** " + (f"‖θ_A − θ_full‖₂ ≤ {_number(certificate)}" if certificate is not None
                                 else "no bound for this operator"),
        f"- **Seed:** {run.seed}",
        "",
    ]


def _evaluation_section(benchmark: Benchmark) -> list[str]:
    lines = ["## Evaluation", ""]
    job = benchmark.job
    rows = [(row, task, result) for row in benchmark.rows for task, result in sorted(row["results"].items())]
    if job is None:
        return lines + ["Not evaluated in MergeHub.", ""]
    if not rows:
        return lines + [f"The newest evaluation ({job.get_status_display().lower()}) holds no scores.", ""]
    lines += ["Scores from MergeHub's evaluation (95% intervals: Wilson score intervals for 0/1 metrics), the merge "
              "with its base and experts for reference:", "",
              "| Model | Role | Task | Metric | Score | 95% interval | n |", "|---|---|---|---|---:|---:|---:|"]
    for row, task, r in rows:
        lines.append(f"| {cell(row['label'])} | {cell(row['role'])} | {cell(task)} | {cell(r.metric)} | "
                     f"{r.score:.3f} | {r.ci_low:.3f}–{r.ci_high:.3f} | {r.n} |")
    return lines + [""]


def _inputs_section(inputs: list[InputModel]) -> list[str]:
    lines = ["## Input checkpoints", ""]
    if not inputs:
        return lines + ["The run's manifest names no inputs.", ""]
    lines += ["| Role | Checkpoint | Source | File | sha256 |", "|---|---|---|---|---|"]
    for m in inputs:
        source = f"`{cell(m.hub_id)}` (Hugging Face)" if m.hub_id else "local"
        if not m.files:
            lines.append(f"| {m.role} | {cell(m.name)} | {source} | — | not recorded |")
        for name, digest in m.files.items():
            lines.append(f"| {m.role} | {cell(m.name)} | {source} | {cell(name)} | `{digest}` |")
    return lines + [""]


def render(card: CardInputs) -> str:
    """The README.md text."""
    run = card.run
    meta = yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True)
    title = " ".join(run.name.split()) or f"Run #{run.pk}"
    lines = [
        "---", meta.rstrip(), "---", "",
        f"# {title}", "",
        f"A merge of {len([m for m in card.inputs if m.role == 'expert'])} expert checkpoint(s) onto a base, made "
        f"with {PROJECT} {card.version} (budget-aware merging: only the expert blocks the plan chose were read).",
        "",
        *_merge_section(run),
        "## Configuration (mergekit YAML)", "",
        fenced(card.config_yaml, "yaml"), "",
        *_evaluation_section(card.benchmark),
        *_inputs_section(card.inputs),
        "## Made with", "",
        f"- {PROJECT} {card.version}" + "".join(
            f", {name} {version}" for name, version in sorted(((run.manifest or {}).get("versions") or {}).items())
            if name != "mergehub"),
        "- The run's replayable manifest: `mergehub_manifest.json` (`mergehub replay` rebuilds the model from it "
        "bit for bit).",
        "",
    ]
    return "\n".join(lines)


def model_card(run: MergeRun) -> str:
    """The card of ``run``, as pushed."""
    return render(card_inputs(run))
