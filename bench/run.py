"""Compare MergeHub with mergekit 0.1.5 on a generated family, cold cache, side by side.

    python -m bench.run --family bench/data/fam --methods task_arithmetic,ties \\
        --budgets 1,0.1 --runs 3 [--markdown]

Per method: mergekit once per run (it has no budget), MergeHub once per budget per run, all
interleaved in the same invocation, after one untimed ``--help`` of each tool (libraries
loaded, not timed). Before every run the page cache of the family (and of MergeHub's
catalog) is evicted. MergeHub's experts are indexed once before the timed runs;
that one-off cost is reported on its own line. The raw read throughputs the runs are compared
with are measured once before each round of runs, so they follow the disk's drift. Outputs are
deleted after each run. All runs and the manifests' metrics are saved to
WORK_DIR/results.json; one table of medians is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from mergehub.demo.synthetic import FAMILY_FILE
from mergehub.engine.budget import parse_budget
from mergehub.engine.errors import ConfigError, MergeHubError
from mergehub.engine.model_files import MANIFEST_NAME as MANIFEST_FILENAME

from .measure import (ChildResult, evict, files_under, inblock_works, raw_read_throughput, read_while_writing,
                      run_child)
from .mergekit_env import BenchSetupError, mergekit_version, mergekit_yaml
from .table import format_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MERGEKIT_VENV = REPO / ".venv-mergekit"
DEFAULT_MERGEHUB = REPO / ".venv" / "bin" / "mergehub"
DEFAULT_WORK_DIR = REPO / "bench" / "out"
TOOLS = ("mergekit", "mergehub", "mergehub-torch")
# mergehub-torch: MergeHub with its compiled kernels switched off (the operators' torch statements)
TOOL_ENV = {"mergehub-torch": {"MERGEHUB_NATIVE": "0"}}
# (method, budget, least speedup over mergekit's full merge) and the methods held to
# ``CEILING_TARGET`` of their disk ceiling (issue 26)
SPEEDUP_TARGETS = (("task_arithmetic", "1", 4.0), ("ties", "1", 10.0), ("task_arithmetic", "0.1", 8.0))
CEILING_METHODS = ("linear", "task_arithmetic")
CEILING_TARGET = 0.70


class BenchRunError(MergeHubError):
    """A benchmarked command failed."""


def load_family(root: Path) -> dict:
    path = root / FAMILY_FILE
    if not path.is_file():
        raise ConfigError(f"{root} has no {FAMILY_FILE}: generate a family with `python -m bench.generate`")
    family = json.loads(path.read_text())
    family["base"] = Path(family["base"])
    family["experts"] = [Path(p) for p in family["experts"]]
    return family


def parse_budgets(text: str) -> list[str]:
    """Comma-separated budgets, each checked by MergeHub's own parser before any run."""
    budgets = [b.strip() for b in text.split(",") if b.strip()]
    if not budgets:
        raise ConfigError("--budgets needs at least one budget, e.g. 1,0.1")
    for b in budgets:
        parse_budget(b)
    return budgets


class Bench:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.argv = args, argv
        self.family_root = Path(args.family).absolute()
        self.family = load_family(self.family_root)
        self.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        self.configs = {m: self.family_root / f"{m}.yaml" for m in self.methods}
        missing = [str(p) for p in self.configs.values() if not p.is_file()]
        if missing:
            raise ConfigError(f"no merge config {', '.join(missing)}: write it next to {FAMILY_FILE} "
                              "or choose --methods among the family's *.yaml")
        self.budgets = parse_budgets(args.budgets)
        # methods without a base read whole models: MergeHub takes them at full budget only
        self.baseless = {m for m, path in self.configs.items() if "base_model" not in yaml.safe_load(path.read_text())}
        self.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        if not self.tools or set(self.tools) - set(TOOLS):
            raise ConfigError(f"--tools {args.tools!r}: use a comma-separated subset of {', '.join(TOOLS)}")
        if args.runs < 1:
            raise ConfigError(f"--runs must be at least 1, got {args.runs}")
        self.work = Path(args.work_dir).absolute()
        self.work.mkdir(parents=True, exist_ok=True)
        self.catalog = self.work / "catalog"
        self.out = self.work / "merge-out"
        self.models = [self.family["base"], *self.family["experts"]]
        self.family_files = files_under(*self.models)
        self.weight_files = [p for p in self.family_files if p.suffix == ".safetensors"]
        self.full_read_bytes = sum(p.stat().st_size for p in self.weight_files)
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.runs: list[dict] = []

    # -- tools ---------------------------------------------------------------------------
    def setup_tools(self) -> None:
        self.mergekit_venv = Path(self.args.mergekit_venv).absolute()
        if "mergekit" in self.tools:
            self.mergekit = mergekit_yaml(self.mergekit_venv, REPO / "constraints.txt")
        self.mergehub = Path(self.args.mergehub).absolute()
        if any(t.startswith("mergehub") for t in self.tools) and not self.mergehub.is_file():
            raise BenchSetupError(f"{self.mergehub} not found: `pip install -e .` in the repo venv "
                                  "or pass --mergehub PATH")

    def command(self, tool: str, method: str, budget: str | None) -> list[str]:
        if tool == "mergekit":
            return [str(self.mergekit), str(self.configs[method]), str(self.out),
                    *shlex.split(self.args.mergekit_args)]
        return [str(self.mergehub), "merge", str(self.configs[method]), str(self.out),
                "--budget", budget, "--catalog", str(self.catalog),
                *shlex.split(self.args.mergehub_args)]

    def warm_up(self) -> None:
        """Load each tool's interpreter and libraries once, untimed: we time merges, not imports."""
        if "mergekit" in self.tools:
            run_child([str(self.mergekit), "--help"], log=self.work / "warmup.log", env=self.env)
        if any(t.startswith("mergehub") for t in self.tools):
            run_child([str(self.mergehub), "--help"], log=self.work / "warmup.log", env=self.env)

    # -- measured steps -------------------------------------------------------------------
    def measured(self, argv: list[str], label: str, tool: str = "mergehub") -> ChildResult:
        evict(self.family_files + files_under(self.catalog))
        log = self.work / "last-run.log"
        env = dict(self.env, **TOOL_ENV.get(tool, {}))
        result = run_child(argv, log=log, sample_proc_io=not self.inblock_ok, env=env,
                           timeout_s=self.args.timeout)
        if result.timed_out:
            raise BenchRunError(f"{label} ran past --timeout {self.args.timeout:.0f} s and was killed "
                                f"(log: {log}): raise --timeout or use a smaller family")
        if result.returncode != 0:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            kept = self.work / f"failed-{label.replace(' ', '_')}.log"
            shutil.copy(log, kept)
            raise BenchRunError(f"{label} exited with {result.returncode}: "
                                f"{tail[-1] if tail else 'no output'} (full log: {kept})")
        return result

    def index_experts(self) -> list[dict]:
        if self.catalog.exists():
            shutil.rmtree(self.catalog)
        rows = []
        for expert in self.family["experts"]:
            argv = [str(self.mergehub), "index", str(expert), "--base", str(self.family["base"]),
                    "--catalog", str(self.catalog)]
            r = self.measured(argv, f"mergehub index {expert.name}")
            rows.append({"expert": str(expert), "argv": argv, **asdict(r)})
            progress(f"  indexed {expert.name}: {r.wall_s:.2f} s, read {r.read_bytes / 1e9:.3f} GB")
        return rows

    def merge(self, tool: str, method: str, budget: str | None, run: int) -> dict:
        if self.out.exists():
            shutil.rmtree(self.out)
        argv = self.command(tool, method, budget)
        label = f"{tool} {method}" + (f" budget {budget}" if budget else "")
        r = self.measured(argv, label, tool)
        row = {"tool": tool, "method": method, "budget": budget, "run": run, "argv": argv, **asdict(r)}
        if tool != "mergekit":
            manifest = self.out / MANIFEST_FILENAME
            if not manifest.is_file():
                raise BenchRunError(f"{label} exited 0 but wrote no {MANIFEST_FILENAME}: the CLI broke its contract")
            row["metrics"] = json.loads(manifest.read_text()).get("metrics")
        shutil.rmtree(self.out)
        progress(f"  run {run + 1}: {label}: {r.wall_s:.2f} s, read {r.read_bytes / 1e9:.3f} GB, "
                 f"peak RSS {r.peak_rss_bytes / 1e9:.2f} GB")
        return row

    # -- the whole benchmark -------------------------------------------------------------------
    def run(self) -> dict:
        self.setup_tools()
        self.warm_up()
        self.inblock_ok = inblock_works(max(self.weight_files, key=lambda p: p.stat().st_size), self.work)
        progress("read counter: " + ("wait4 ru_inblock (checked against /proc/self/io)"
                                     if self.inblock_ok else "/proc/PID/io sampling (ru_inblock is empty here)"))
        raw, raw_direct, read_write = [], [], []
        # what a full merge writes: one model's weights (the base's, or the first input's)
        out_bytes = sum(p.stat().st_size for p in files_under(self.models[0]) if p.suffix == ".safetensors")
        index = self.index_experts() if any(t.startswith("mergehub") for t in self.tools) else []
        for run in range(self.args.runs):
            # The disk's speed drifts on shared machines (0.40–1.08 GB/s within two hours on one), so
            # the raw reads are taken once per round, next to the merges they are compared with.
            nbytes, seconds = raw_read_throughput(self.weight_files)
            raw.append(nbytes / seconds)
            direct = raw_read_throughput(self.weight_files, direct=True)
            if direct is not None:
                raw_direct.append(direct[0] / direct[1])
            nbytes, seconds = read_while_writing(self.weight_files, self.work / "write-probe.bin", out_bytes)
            read_write.append(nbytes / seconds)
            progress(f"round {run + 1}: raw cold sequential read {raw[-1] / 1e9:.3f} GB/s"
                     + (f", {raw_direct[-1] / 1e9:.3f} GB/s uncached" if direct is not None else "")
                     + f"; reading while writing {out_bytes / 1e9:.2f} GB: {read_write[-1] / 1e9:.3f} "
                     "GB/s read and written")
            for method in self.methods:
                if "mergekit" in self.tools:
                    self.runs.append(self.merge("mergekit", method, None, run))
                for budget in self.budgets:  # with and without kernels back to back
                    if method in self.baseless and parse_budget(budget).fraction != 1.0:
                        continue  # (MergeHub refuses a budget it cannot plan without a base)
                    for tool in ("mergehub", "mergehub-torch"):
                        if tool in self.tools:
                            self.runs.append(self.merge(tool, method, budget, run))
        results = {
            "command": command_line(self.argv), "family": str(self.family_root),
            "family_summary": self.family.get("shape"), "full_read_bytes": self.full_read_bytes,
            "raw_read_bytes_per_s": raw, "raw_direct_read_bytes_per_s": raw_direct,
            "read_write_bytes_per_s": read_write,
            "read_counter": "ru_inblock" if self.inblock_ok else "proc_io",
            "index": index, "runs": self.runs, "machine": machine(),
            "versions": {"mergekit": mergekit_version(self.mergekit_venv) if "mergekit" in self.tools else None},
        }
        (self.work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        return results


def medians(runs: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["tool"], r["budget"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "read_bytes", "peak_rss_bytes")}
        merge_s = [merge_seconds(r) for r in rs]
        out[key]["merge_s"] = statistics.median(merge_s) if None not in merge_s else None
        written = [(r.get("metrics") or {}).get("bytes_written") for r in rs]
        out[key]["written_bytes"] = statistics.median(written) if None not in written else None
        out[key]["n"] = len(rs)
    return out


def disk_ceiling(m: dict, shared: float, raw: float) -> str:
    """The % of raw a run reading R and writing W bytes could reach if the disk, moving
    ``shared`` bytes/s read and written together, were its only limit: R / ((R + W) / shared)."""
    written = m.get("written_bytes")
    if written is None or not m["read_bytes"]:
        return "—"
    return f"{100 * m['read_bytes'] / (m['read_bytes'] + written) * shared / raw:.0f}%"


def merge_seconds(run: dict) -> float | None:
    """MergeHub's own time for the merge (the manifest's seconds.total: the command's wall time
    less the interpreter's start-up and imports); None for mergekit."""
    return ((run.get("metrics") or {}).get("seconds") or {}).get("total")


def ceiling_share(m: dict, shared: float | None) -> float | None:
    """How close the merge itself (start-up excluded) comes to its disk ceiling: bytes read
    and written per merge second over the rate the disk moves them together."""
    if not shared or m.get("merge_s") is None or m.get("written_bytes") is None:
        return None
    return (m["read_bytes"] + m["written_bytes"]) / m["merge_s"] / shared


def report(results: dict, methods: list[str], budgets: list[str], tools: list[str], markdown: bool) -> str:
    med = medians(results["runs"])
    raw = statistics.median(results["raw_read_bytes_per_s"])
    full = results["full_read_bytes"]
    shared = statistics.median(results["read_write_bytes_per_s"]) if results.get("read_write_bytes_per_s") else None
    headers = ["method", "budget", "tool", "wall s", "read GB", "peak RSS GB", "speedup vs mergekit",
               "kernels gain", "% of raw", "merge s", "% of raw (merge)"] \
        + (["disk ceiling", "% of ceiling (merge)"] if shared else [])
    rows = []
    for method in methods:
        base = med.get((method, "mergekit", None))
        keys = [(method, "mergekit", None)] if "mergekit" in tools else []
        keys += [(method, tool, b) for b in budgets for tool in ("mergehub", "mergehub-torch") if tool in tools]
        for key in keys:
            if key not in med:
                continue
            m = med[key]
            speedup = f"{base['wall_s'] / m['wall_s']:.2f}x" if base else "—"
            without = med.get((method, "mergehub-torch", key[2])) if key[1] == "mergehub" else None
            gain = f"{without['wall_s'] / m['wall_s']:.2f}x" if without else "—"
            merge_s = m["merge_s"]
            share = ceiling_share(m, shared)
            rows.append([method, "full" if key[2] is None else key[2], key[1], f"{m['wall_s']:.2f}",
                         f"{m['read_bytes'] / 1e9:.3f}", f"{m['peak_rss_bytes'] / 1e9:.2f}", speedup, gain,
                         f"{100 * m['read_bytes'] / m['wall_s'] / raw:.0f}%",
                         "—" if merge_s is None else f"{merge_s:.2f}",
                         "—" if merge_s is None else f"{100 * m['read_bytes'] / merge_s / raw:.0f}%"]
                        + ([disk_ceiling(m, shared, raw), "—" if share is None else f"{100 * share:.0f}%"]
                           if shared else []))
    shape = results.get("family_summary") or {}
    n_runs = max((m["n"] for m in med.values()), default=0)
    notes = [
        f"command: {results['command']}",
        f"family: {results['family']} (hidden {shape.get('hidden')}, layers {shape.get('layers')}, "
        f"vocab {shape.get('vocab')}); a full-read merge reads {full / 1e9:.3f} GB of weights",
        f"raw cold sequential read of those files: {raw / 1e9:.3f} GB/s ({_spread(results['raw_read_bytes_per_s'])}); "
        f"medians of {n_runs} runs, page cache evicted before each; read counter: {results['read_counter']}",
        "% of raw: the run's bytes read from storage per second of wall time, against the raw read; "
        "merge s: MergeHub's own time (manifest), without interpreter start-up "
        "(importing torch: 0.7–2.3 s on 2 shared cores)",
    ]
    direct = results.get("raw_direct_read_bytes_per_s")
    if direct:
        notes.append(f"the same read around the page cache (O_DIRECT, as MergeHub reads cold ranges): "
                     f"{statistics.median(direct) / 1e9:.3f} GB/s")
    if shared:
        notes.append(f"the same files read as MergeHub reads (4 MiB pieces, 4 at a time, O_DIRECT) while one "
                     f"model's size is written (O_DIRECT, fsync): {shared / 1e9:.3f} GB/s read and written; "
                     "disk ceiling: the most a run reading R and writing W bytes could reach at that rate, "
                     "R/(R+W) of it, as % of raw")
    if results["index"]:
        total = sum(r["wall_s"] for r in results["index"])
        read = sum(r["read_bytes"] for r in results["index"])
        notes.append(f"mergehub one-off index of {len(results['index'])} experts: {total:.2f} s, "
                     f"read {read / 1e9:.3f} GB (not included in the merge times)")
    m = results["machine"]
    notes.append(f"machine: {m['cpus']} CPUs, {m['memory_gb']} GB RAM, {m['platform']}, "
                 f"mergekit {results['versions']['mergekit']}")
    notes.append("kernels gain: the same merge's wall time without its compiled kernels (mergehub-torch, "
                 "MERGEHUB_NATIVE=0) over its time with them; % of ceiling (merge): bytes read and written "
                 "per merge second over the read-and-write rate above")
    table = format_table(headers, rows, markdown=markdown)
    goals = targets(med, shared)
    if markdown:
        return "\n".join(["```", *notes, "```", "", table] + (["", *goals] if goals else []))
    return "\n".join([*notes, "", table] + (["", *goals] if goals else []))


def targets(med: dict, shared: float | None) -> list[str]:
    """Issue 26's targets, each with the measured value and whether it is met (those the
    run measured)."""
    lines = []
    for method, budget, least in SPEEDUP_TARGETS:
        mergekit, ours = med.get((method, "mergekit", None)), med.get((method, "mergehub", budget))
        if mergekit and ours:
            got = mergekit["wall_s"] / ours["wall_s"]
            lines.append(f"target: {method} at budget {budget} ≥ {least:g}x mergekit's full merge: "
                         f"{got:.2f}x ({'met' if got >= least else 'NOT met'})")
    for method in CEILING_METHODS:
        ours = med.get((method, "mergehub", "1"))
        share = ceiling_share(ours, shared) if ours else None
        if share is not None:
            lines.append(f"target: {method} ≥ {100 * CEILING_TARGET:.0f}% of its disk ceiling (merge): "
                         f"{100 * share:.0f}% ({'met' if share >= CEILING_TARGET else 'NOT met'})")
    return ["- " + line for line in lines]


def _spread(readings: list[float]) -> str:
    """How many raw readings the median is of, and their range (one is taken before each round)."""
    if len(readings) < 2:
        return "one reading"
    return f"median of {len(readings)} readings, one before each round of runs: " \
           f"{min(readings) / 1e9:.3f}–{max(readings) / 1e9:.3f} GB/s"


def machine() -> dict:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 0
    return {"cpus": os.cpu_count(), "memory_gb": round(pages / 1e9, 1), "platform": platform.platform(),
            "python": platform.python_version()}


def command_line(argv: list[str]) -> str:
    return "python -m bench.run " + " ".join(shlex.quote(a) for a in argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", required=True, help="a directory made by `python -m bench.generate`")
    p.add_argument("--methods", default="task_arithmetic,ties",
                   help="comma-separated; each needs METHOD.yaml in the family (default task_arithmetic,ties)")
    p.add_argument("--budgets", default="1,0.1", help="MergeHub budgets: fractions or sizes (default 1,0.1)")
    p.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians are reported")
    p.add_argument("--tools", default="mergekit,mergehub,mergehub-torch",
                   help="which tools to run, among mergekit, mergehub and mergehub-torch (MergeHub without its "
                        "compiled kernels); default all three")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--mergekit-venv", default=str(DEFAULT_MERGEKIT_VENV),
                   help="venv holding mergekit 0.1.5; created and installed when missing")
    p.add_argument("--mergehub", default=str(DEFAULT_MERGEHUB), help="the mergehub executable")
    p.add_argument("--mergekit-args", default="", help="extra arguments for mergekit-yaml, quoted")
    p.add_argument("--mergehub-args", default="", help="extra arguments for mergehub merge, quoted")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds after which one tool run is killed and the benchmark stops (default 3600)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                   help="catalog, merge outputs (deleted after each run), logs, results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        bench = Bench(args, argv)
        results = bench.run()
    except MergeHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress(f"benchmark done in {time.perf_counter() - started:.0f} s; all runs in {bench.work / 'results.json'}")
    print(report(results, bench.methods, bench.budgets, bench.tools, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
