"""The engine's public entry points, used by the CLI and the web workers.

    inspect_model(path)                       -> ModelLayout (headers only)
    check_compatible(base, expert)            -> None or MismatchedCheckpoints
    index_model(model, base, catalog_dir=...) -> IndexSummary
    load_config(path) / load_config_mapping(mapping) -> MergeConfig
    plan_merge(config, budget=..., ...)       -> PlanReport (reads no expert weights)
    run_merge(config, out_dir, ...)           -> MergeResult (publishes atomically)
    sweep(config, budgets, ...)               -> list of per-budget dicts (one pass)
    replay(manifest_path, out_dir, ...)       -> MergeResult, or ReplayMismatch
    read_manifest(out_dir or manifest path)   -> the manifest dict, or InvalidCheckpoint
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

# Torch-free modules only: importing this module must not import torch, so that a web process
# starts without it and imports it when a page first needs the engine. The torch-backed
# modules are imported inside the functions below, and the names apps use from them are
# resolved on first access (``__getattr__`` at the end of this file).
from .budget import base_only_warning, parse_budget
from .config_yaml import ALLOWED_KEYS as CONFIG_KEYS
from .config_yaml import MODEL_ENTRY_KEYS, dump_yaml, load_yaml
from .config_yaml import check_keys as check_config_keys
from .control import CancelFn, Control, Progress, ProgressFn
from .errors import (BudgetError, Cancelled, ConfigError, DiskFull, InvalidCheckpoint, MergeHubError,
                     MismatchedCheckpoints, NonFiniteOutput, OutputExists, ReplayMismatch)
from .layers import layer_index
from .locations import catalog_in, default_catalog_dir
from .model_files import INDEX_NAME as SHARDED_INDEX_NAME
from .model_files import MANIFEST_NAME as MANIFEST_FILENAME
from .model_files import SINGLE_NAME as SINGLE_FILE_NAME
from .prefetch import Prefetch
from .publish import Staging, check_target
from .units import binary_size, parse_size

if TYPE_CHECKING:
    from .catalog import IndexEntry
    from .config_types import MergeConfig
    from .layout import ModelLayout
    from .planner import Plan

__all__ = ["inspect_model", "check_compatible", "index_model", "load_config", "load_config_mapping",
           "plan_merge", "run_merge", "sweep", "replay", "read_manifest", "NotIndexed", "MergeResult", "PlanReport"]


def read_manifest(path):
    """The manifest dict of an output directory (or of a manifest path), or InvalidCheckpoint."""
    from . import manifest as manifest_mod
    return manifest_mod.read(path)


class NotIndexed(MergeHubError):
    """An expert has no valid catalog entry yet (index it first)."""


def inspect_model(path: str | os.PathLike) -> ModelLayout:
    from .layout import read_model_layout
    return read_model_layout(path)


def load_config_mapping(mapping: dict, base_dir: Path | None = None) -> MergeConfig:
    from .config import parse_config
    return parse_config(mapping, base_dir=base_dir)


@dataclass
class IndexSummary:
    entry: IndexEntry
    layout: ModelLayout
    indexed_now: bool

    def to_dict(self) -> dict:
        return self.entry.summary(self.layout)


def index_model(model_dir, base_dir, *, catalog_dir=None, block_size: int | None = None,
                force: bool = False, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, sketch_rank: int | None = None) -> IndexSummary:
    """Index an expert against its base, with low-rank sketches of ``sketch_rank`` (0: none;
    None: DEFAULT_SKETCH_RANK). An entry that is current is kept (a rank-0 request accepts any rank)."""
    from .blocks import DEFAULT_BLOCK_SIZE
    from .catalog import Catalog
    from .layout import read_model_layout
    from .sketch import DEFAULT_SKETCH_RANK, check_rank
    sketch_rank = check_rank(DEFAULT_SKETCH_RANK if sketch_rank is None else sketch_rank)
    base, expert = read_model_layout(base_dir), read_model_layout(model_dir)
    entries, todo = Catalog(catalog_dir).ensure([expert], base, block_size or DEFAULT_BLOCK_SIZE,
                                                Control(progress, cancel), force=force,
                                                sketch_rank=sketch_rank, index_rank=sketch_rank)
    return IndexSummary(entries[0], expert, bool(todo))


def merge_sketch_rank(config: MergeConfig, requested: int | None = None) -> int:
    """The sketch rank a budgeted merge uses: ``requested`` (a CLI flag, a form), else the
    config's ``mergehub: {sketch_rank: N}``, else the default for operators whose quality
    sketches were measured to help (``Operator.sketches_by_default``), else 0 (off)."""
    from .sketch import DEFAULT_SKETCH_RANK, check_rank
    if requested is not None:
        return check_rank(requested)
    meta = config.raw.get("mergehub") if isinstance(config.raw, dict) else None
    if isinstance(meta, dict) and meta.get("sketch_rank") is not None:
        return check_rank(meta["sketch_rank"], "mergehub.sketch_rank")
    return DEFAULT_SKETCH_RANK if config.operator.sketches_by_default else 0


@dataclass
class _Inputs:
    base: ModelLayout | None
    experts: list[ModelLayout]
    entries: list[IndexEntry] | None
    index_seconds: float
    indexed: list[int]
    sketch_files: list[Path | None] | None = None


def _open_inputs(config: MergeConfig, catalog_dir, block_size: int, control: Control,
                 index_missing: bool, sketch_rank: int = 0) -> _Inputs:
    from .catalog import Catalog, check_compatible
    from .layout import read_model_layout
    base = read_model_layout(config.base_model.path) if config.base_model else None
    experts = [read_model_layout(m.path) for m in config.models]
    reference = base or experts[0]
    for e in experts:
        check_compatible(reference, e)
    if base is None or config.operator.base == "ignored":
        return _Inputs(base, experts, None, 0.0, [])
    catalog = Catalog(catalog_dir)
    if not index_missing:
        entries = [catalog.lookup(e, base, block_size, sketch_rank) for e in experts]
        missing = [str(e.root) for e, entry in zip(experts, entries) if entry is None]
        if missing:
            rank_flag = f" --sketch-rank {sketch_rank}" if sketch_rank else ""
            raise NotIndexed(f"not indexed yet{' with sketches of rank ' + str(sketch_rank) if sketch_rank else ''} "
                             f"(or changed since): {', '.join(missing)}; run "
                             f"`mergehub index MODEL --base BASE{rank_flag}` or wait for indexing to finish")
        return _Inputs(base, experts, entries, 0.0, [], [catalog.sketch_path(e) for e in entries])
    t0 = time.perf_counter()
    entries, todo = catalog.ensure(experts, base, block_size, control, sketch_rank=sketch_rank)
    return _Inputs(base, experts, entries, time.perf_counter() - t0 if todo else 0.0, todo,
                   [catalog.sketch_path(e) for e in entries])


def plan_merge(config: MergeConfig, *, budget=1.0, catalog_dir=None, block_size: int | None = None,
               seed: int = 0, index_missing: bool = False, progress: ProgressFn | None = None,
               sketch_rank: int | None = None) -> Plan:
    """Plan from the catalog alone: no expert weight is read (unless ``index_missing``).
    ``sketch_rank``: see merge_sketch_rank."""
    from .blocks import DEFAULT_BLOCK_SIZE
    from .planner import make_plan
    block_size = block_size or DEFAULT_BLOCK_SIZE
    budget_obj = parse_budget(budget)  # a bad budget fails before any indexing
    rank = merge_sketch_rank(config, sketch_rank)
    inputs = _open_inputs(config, catalog_dir, block_size, Control(progress), index_missing, rank)
    return make_plan(config, inputs.base, inputs.experts, inputs.entries, budget_obj, block_size, seed,
                     sketch_rank=rank)


@dataclass
class MergeResult:
    out_dir: Path
    manifest: dict
    metrics: dict
    plan: Plan


def _changed_access(inputs: _Inputs) -> list[dict[str, list[int]]]:
    return [{t: [b for b, c in enumerate(st.changed) if c] for t, st in e.tensors.items()}
            for e in inputs.entries]


def run_merge(config: MergeConfig, out_dir, *, budget=1.0, seed: int = 0, device: str = "auto",
              block_size: int | None = None, catalog_dir=None, force: bool = False,
              measure_deviation: bool = False, progress: ProgressFn | None = None,
              cancel: CancelFn | None = None, shard_bytes: int | None = None,
              access: list[dict[str, list[int]]] | None = None,
              verify: Callable[[dict], None] | None = None,
              prefetch: Prefetch | None = None, output_hash: str | None = None,
              sketch_rank: int | None = None, sketches: list[list[str]] | None = None) -> MergeResult:
    """Merge and publish atomically. ``access`` replays a recorded access set; ``verify`` sees
    the manifest before publishing and may raise to publish nothing. ``prefetch``: a page-cache
    warm-up the caller started (prefetch.py, which the caller also stops on errors); it is
    stopped before the first read, and what it read is counted with the merge's reads.
    ``output_hash``: how the output files are hashed (writer.OUTPUT_HASHES). ``sketch_rank``: see
    merge_sketch_rank; ``sketches`` replays a recorded plan's sketches (with ``access``).
    ``shard_bytes`` and ``output_hash`` default to the writer's DEFAULT_SHARD_BYTES and
    DEFAULT_OUTPUT_HASH."""
    from . import manifest as manifest_mod
    from .blocks import DEFAULT_BLOCK_SIZE
    from .executor import Executor, pick_device
    from .planner import make_plan
    from .writer import DEFAULT_OUTPUT_HASH, DEFAULT_SHARD_BYTES, ShardedWriter
    shard_bytes = DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes
    output_hash = DEFAULT_OUTPUT_HASH if output_hash is None else output_hash
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_target(out_dir.absolute(), force)  # fail before any work
    block_size = block_size or DEFAULT_BLOCK_SIZE
    control = Control(progress, cancel)
    dev = pick_device(device)
    budget_obj = parse_budget(budget)
    rank = merge_sketch_rank(config, sketch_rank)
    inputs = _open_inputs(config, catalog_dir, block_size, control, index_missing=True, sketch_rank=rank)
    t_plan = time.perf_counter()
    plan = make_plan(config, inputs.base, inputs.experts, inputs.entries, budget_obj, block_size,
                     seed, access=access, sketch_rank=rank, sketches=sketches)
    plan_s = time.perf_counter() - t_plan
    warnings = _warnings(config, inputs) + plan.warnings()
    evaluate = measure_deviation and inputs.entries is not None
    executor = Executor(config, inputs.base, inputs.experts, plan.access, block_size, seed, dev,
                        control, references=[plan.access] if evaluate else None,
                        full_access=_changed_access(inputs) if evaluate or plan.sketch_bytes else None,
                        sketches=plan.sketches, reference_sketches=[plan.sketches] if evaluate else None,
                        sketch_files=inputs.sketch_files)
    control.check()
    warmed = prefetch.finish() if prefetch is not None else {}
    with Staging(out_dir, force) as stage:
        writer = ShardedWriter(stage.path, executor.out_specs(), shard_bytes, hash_name=output_hash)
        try:
            stats = executor.run(writer.write)
            _count_prefetched(stats, warmed, inputs, executor.uses_base)
            output_files = writer.finish()
        finally:
            writer.abort()
        t_w = time.perf_counter()
        _copy_extra_files(inputs.base or inputs.experts[0], stage.path, config)
        stats.write_s += time.perf_counter() - t_w
        total_s = time.perf_counter() - started
        metrics = _metrics(plan, stats, inputs, executor, plan_s, total_s, dev, warnings, writer)
        doc = manifest_mod.build(config=_config_mapping(config), plan=plan, seed=seed,
                                 device=str(dev), outputs=output_files, metrics=metrics,
                                 inputs=_input_hashes(config, inputs, plan), shard_bytes=shard_bytes,
                                 output_hash=output_hash)
        manifest_mod.write(stage.path, doc)
        if verify is not None:
            verify(doc)
        control.check()
        stage.publish()
    return MergeResult(out_dir, doc, metrics, plan)


def _count_prefetched(stats, warmed: dict[Path, int], inputs: _Inputs, uses_base: bool) -> None:
    """Add what the page-cache warm-up fetched from storage to the reads of the model it
    belongs to (the executor then found those bytes cached and counted nothing for them)."""
    if uses_base:
        stats.base_storage += sum(warmed.get(f.path, 0) for f in inputs.base.files)
        return
    for k, layout in enumerate(inputs.experts):
        got = sum(warmed.get(f.path, 0) for f in layout.files)
        stats.per_expert_storage[k] += got
        stats.expert_storage += got


def _metrics(plan, stats, inputs, executor, plan_s, total_s, dev, warnings, writer) -> dict:
    deviation = executor.deviations[0].result() if executor.deviations else None
    return {
        "budget": plan.budget.text,
        "budget_bytes": plan.budget_bytes,
        "planned_expert_bytes": plan.planned_expert_bytes,
        "planned_sketch_bytes": plan.sketch_bytes,
        "sketch_rank": plan.sketch_rank,
        "sketches_planned": plan.sketches_planned,
        "sketch_bytes_read": stats.sketch_storage,
        "sketch_bytes_requested": stats.sketch_logical,
        "full_expert_bytes": plan.full_expert_bytes,
        "nonzero_expert_bytes": plan.nonzero_expert_bytes,
        "blocks_planned": plan.blocks_planned,
        "blocks_total": plan.blocks_total,
        "expert_bytes_read": stats.expert_storage,
        "expert_bytes_requested": stats.expert_logical,
        "base_bytes_read": stats.base_storage,
        "base_bytes_requested": stats.base_logical,
        "verification_bytes_read": stats.verify_storage,
        "reread_bytes_requested": stats.reread_logical,
        "bytes_written": writer.bytes_written,
        "certificate": plan.certificate,
        "deviation": deviation,
        "seconds": {"plan": plan_s, "read": stats.read_s, "compute": stats.compute_s,
                    "write": stats.write_s, "total": total_s, "index": inputs.index_seconds},
        "per_expert": [dict(pe, read_bytes=stats.per_expert_storage[k],
                            requested_bytes=stats.per_expert_logical[k])
                       for k, pe in enumerate(plan.per_expert)],
        "indexed_now": [str(inputs.experts[k].root) for k in inputs.indexed],
        "device": str(dev),
        "warnings": warnings,
    }


def _warnings(config: MergeConfig, inputs: _Inputs) -> list[str]:
    out = []
    for m, e in zip(config.models, inputs.entries or []):
        if e.nonfinite:
            out.append(f"{m.name or m.path}: NaN or Inf in {len(e.nonfinite)} tensors "
                       f"({', '.join(e.nonfinite[:3])}); the merge carries them into the output")
    return out


def _input_hashes(config: MergeConfig, inputs: _Inputs, plan: Plan) -> dict:
    """The file identities the plan digest covers (sha256 from the catalog, or sizes for
    models read whole without one), with the paths they were found at."""
    base = {"path": str(inputs.base.root), "files": plan.inputs["base"]} if inputs.entries else None
    return {"base": base,
            "models": [{"name": m.name, "path": str(e.root), "files": files}
                       for m, e, files in zip(config.models, inputs.experts, plan.inputs["experts"])]}


def _config_mapping(config: MergeConfig) -> dict:
    """The config with absolute model paths: what replay re-parses."""
    from .config import to_mergekit_yaml
    return yaml.safe_load(to_mergekit_yaml(config))


def _copy_extra_files(source: ModelLayout, dest: Path, config: MergeConfig) -> None:
    for path in source.extra_files:
        target = dest / path.name
        if path.name == "config.json":
            _write_model_config(path, target, source, config)
        else:
            shutil.copyfile(path, target)


def _write_model_config(src: Path, dest: Path, source: ModelLayout, config: MergeConfig) -> None:
    from .dtypes import CONFIG_NAME, torch_dtype
    try:
        data = json.loads(src.read_text())
    except (OSError, ValueError):
        shutil.copyfile(src, dest)
        return
    floats = [torch_dtype(t.dtype) for t in source.tensors.values() if torch_dtype(t.dtype).is_floating_point]
    out = config.out_dtype or (floats[0] if floats else None)
    if isinstance(data, dict) and out is not None:
        data["torch_dtype"] = CONFIG_NAME[out]
    dest.write_text(json.dumps(data, indent=2) + "\n")


def sweep(config: MergeConfig, budgets: list, *, seed: int = 0, device: str = "auto",
          block_size: int | None = None, catalog_dir=None, progress: ProgressFn | None = None,
          cancel: CancelFn | None = None, sketch_rank: int | None = None) -> list[dict]:
    """Planned bytes, certificate and exact deviation for each budget, in one pass over the data.
    Each row has ``"mode"``: "sketch" (plans that may use sketches of ``sketch_rank``, see
    merge_sketch_rank) or "blocks"; with sketches on, every budget gets both rows. Where the catalog holds no sketch (no tensor is big enough for one at this
    rank), only "blocks" rows."""
    from .blocks import DEFAULT_BLOCK_SIZE
    from .executor import Executor, pick_device
    from .planner import make_plan
    block_size = block_size or DEFAULT_BLOCK_SIZE
    control = Control(progress, cancel)
    parsed = [parse_budget(b) for b in budgets]  # bad budgets fail before any indexing
    rank = merge_sketch_rank(config, sketch_rank)
    inputs = _open_inputs(config, catalog_dir, block_size, control, index_missing=True, sketch_rank=rank)
    if inputs.entries is None:
        raise MergeHubError(f"{config.merge_method} without a base reads whole models at any budget; "
                            "a sweep needs a base model")
    if not any(e.sketch_total_bytes for e in inputs.entries):
        rank = 0  # no tensor is worth a sketch at this rank: every plan is blocks only
    modes = [("sketch", rank), ("blocks", 0)] if rank else [("blocks", 0)]
    plans = [(mode, make_plan(config, inputs.base, inputs.experts, inputs.entries, b, block_size, seed,
                              sketch_rank=r))
             for b in parsed for mode, r in modes]
    full = _changed_access(inputs)
    executor = Executor(config, inputs.base, inputs.experts, full, block_size, seed, pick_device(device),
                        control, references=[p.access for _, p in plans], full_access=full,
                        reference_sketches=[p.sketches for _, p in plans], sketch_files=inputs.sketch_files)
    executor.run(None)
    rows = []
    for (mode, plan), dev in zip(plans, executor.deviations):
        row = plan.to_dict()
        row["mode"] = mode
        row["deviation"] = dev.result()
        rows.append(row)
    return rows


def replay(manifest_path, out_dir, *, force: bool = False, catalog_dir=None, device: str | None = None,
           progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> MergeResult:
    """Re-run a manifest with its recorded access set; ReplayMismatch (and nothing published)
    unless bit-identical."""
    from . import manifest as manifest_mod
    from .config import parse_config
    from .planner import expand_ranges
    from .writer import DEFAULT_SHARD_BYTES
    doc = manifest_mod.read(manifest_path)
    config = parse_config(doc["config"])
    manifest_mod.check_replayable(doc, config.operator.uses_random_stream)
    result = run_merge(
        config, out_dir, budget=doc["budget"]["spec"], seed=doc["seed"],
        device=device or ("cuda" if str(doc.get("device", "cpu")).startswith("cuda") else "cpu"),
        block_size=doc["plan"]["block_size"], catalog_dir=catalog_dir, force=force,
        progress=progress, cancel=cancel, shard_bytes=doc.get("shard_bytes", DEFAULT_SHARD_BYTES),
        access=expand_ranges(doc["plan"]["access"]) if doc["plan"].get("access") is not None else None,
        sketch_rank=doc["plan"].get("sketch_rank", 0), sketches=doc["plan"].get("sketches") or None,
        verify=lambda replayed: manifest_mod.verify_replay(doc, replayed),
        output_hash=manifest_mod.output_hash(doc))
    return result


def parse_block_size(text: Any) -> int:
    return parse_size(text, "block size")


def operator_specs() -> dict:
    """Every merge method by name: its Operator spec (parameters, defaults, whether it merges
    against a base, whether sketches are on by default)."""
    from .operators.registry import OPERATORS, _load_all
    _load_all()
    return dict(OPERATORS)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch)."""
    import torch
    return torch.cuda.is_available()


def import_torch_modules() -> None:
    """Import the torch-backed engine modules now rather than on first use (the CLI does, with
    the cyclic GC paused)."""
    for module in sorted({module for module, _ in _LAZY_EXPORTS.values()} | {".executor", ".writer"}):
        importlib.import_module(module, __package__)


# Names from torch-backed modules, imported on first access: {name here: (module, name there)}.
_LAZY_EXPORTS = {
    "PlanReport": (".planner", "Plan"),
    "check_compatible": (".catalog", "check_compatible"),
    "load_config": (".config", "load_config"),
    "parse_config": (".config", "parse_config"),
    "to_mergekit_yaml": (".config", "to_mergekit_yaml"),
    "CONFIG_DTYPE_NAMES": (".dtypes", "CONFIG_NAME"),
    "SAFETENSORS_DTYPE_NAMES": (".dtypes", "TORCH_TO_SAFETENSORS"),
    "parse_config_dtype": (".dtypes", "parse_config_dtype"),
    "DEFAULT_SKETCH_RANK": (".sketch", "DEFAULT_SKETCH_RANK"),
    "MAX_SKETCH_RANK": (".sketch", "MAX_SKETCH_RANK"),
    # the rule for a sketch rank (a whole number from 0, off, to MAX_SKETCH_RANK), for the apps
    "check_sketch_rank": (".sketch", "check_rank"),
    "Operator": (".operators.base", "Operator"),
    "OperatorParam": (".operators.base", "Param"),
    "REQUIRED": (".operators.base", "REQUIRED"),
    "get_operator": (".operators.registry", "get_operator"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY_EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __package__), attribute)
    globals()[name] = value
    return value


__all__ += ["parse_block_size", "ReplayMismatch", "IndexSummary", "merge_sketch_rank", "DEFAULT_SKETCH_RANK",
            "MAX_SKETCH_RANK", "check_sketch_rank", "operator_specs", "cuda_available", "import_torch_modules",
            # torch-free, imported with this module
            "CancelFn", "Control", "Progress", "ProgressFn", "Staging", "catalog_in", "default_catalog_dir", "binary_size", "parse_size",
            "parse_budget", "base_only_warning", "layer_index",
            "CONFIG_KEYS", "MODEL_ENTRY_KEYS", "check_config_keys", "dump_yaml", "load_yaml", "MANIFEST_FILENAME",
            "SHARDED_INDEX_NAME", "SINGLE_FILE_NAME",
            "BudgetError", "Cancelled", "ConfigError", "DiskFull", "InvalidCheckpoint", "MergeHubError",
            "MismatchedCheckpoints", "NonFiniteOutput", "OutputExists",
            # torch-backed, imported on first access
            *(name for name in _LAZY_EXPORTS if name not in ("PlanReport", "check_compatible", "load_config",
                                                             "DEFAULT_SKETCH_RANK", "MAX_SKETCH_RANK",
                                                             "check_sketch_rank"))]
