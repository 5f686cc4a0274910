"""The catalog: per-block delta statistics of each (expert, base) pair, computed once.

Indexing reads base and expert fully (the only full expert read MergeHub ever does) and
records, for every block b of every tensor of expert k:

* ``changed``  — whether the block's bytes differ from the base's (unchanged blocks are never
  read again: their delta is exactly zero);
* ``norm``     — ‖δ_kb‖₂ computed in fp32 with a float64 sum;
* ``max_abs``  — max |δ_kb|; ``nonzero`` — fraction of non-zero entries;
* ``hash``     — xxh3-128 of the expert block's bytes (content identity);
* ``residual`` — for a tensor with a low-rank sketch (sketch.py), per rung r of its rank ladder
  (``sketch_ranks``), ‖δ_kb − (A_r·B_rᵀ)_b‖₂: what the rank-r sketch misses in the block (0 for
  unchanged blocks, which a merge never approximates);

plus the sha256 of every file of both models. The sketch factors themselves go to a
safetensors file next to the entry's JSON (``sketch_file``). An entry stays valid while the files' stat
fingerprints (size, mtime, inode) match; any change makes it stale and it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import xxhash

from .blocks import DEFAULT_BLOCK_SIZE, partition, rows_per_block
from .buffers import retained_heap
from .control import Control
from .errors import MismatchedCheckpoints
from .layout import ModelLayout
from .locations import default_catalog_dir
from .reader import RangeReader
from .sketch import DEFAULT_SKETCH_RANK, factor_dtype, sketch_bytes, sketch_delta, tensor_rungs, write_factors

CATALOG_FORMAT = 3  # 3: low-rank sketches (residual, sketch_bytes, sketch_rank, sketch_file)
CHUNK_BYTES = 64 << 20  # rows read per step while indexing


def fingerprint(layout: ModelLayout) -> list[list]:
    """Cheap identity of a model's weight files: name, size, mtime_ns, inode."""
    out = []
    for f in layout.files:
        st = os.stat(f.path)
        out.append([f.path.name, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


@dataclass
class TensorStats:
    rows_per_block: int
    changed: list[bool]
    norm: list[float]
    max_abs: list[float]
    nonzero: list[float]
    hash: list[str]
    nonfinite: bool = False
    sketch_ranks: list[int] = field(default_factory=list)  # the rungs stored (empty: no sketch)
    residual: list[list[float]] = field(default_factory=list)  # per rung, per block
    sketch_bytes: int = 0  # bytes of the stored factors (the top rung)

    @property
    def delta_norm(self) -> float:
        return math.sqrt(sum(n * n for n in self.norm))


@dataclass
class IndexEntry:
    expert: str
    base: str
    block_size: int
    expert_fingerprint: list
    base_fingerprint: list
    expert_files: dict[str, str]  # file name -> sha256
    base_files: dict[str, str]
    tensors: dict[str, TensorStats]
    seconds: float = 0.0  # the indexing pass, shared by the experts indexed in it
    storage_bytes_read: int = 0  # read from this expert's files (measured)
    base_storage_bytes_read: int = 0  # read from the base in that pass (shared)
    pass_experts: int = 1  # experts indexed in the same pass over the base
    format: int = CATALOG_FORMAT
    nonfinite: list[str] = field(default_factory=list)
    sketch_rank: int = 0  # the rank sketches were asked for at indexing (0: none); see sketch.ladder
    sketch_file: str = ""  # the factors' file, in the catalog directory
    sketch_seconds: float = 0.0  # time spent sketching (all experts of the pass), overlapping the reads

    @property
    def sketch_total_bytes(self) -> int:
        return sum(st.sketch_bytes for st in self.tensors.values())

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "IndexEntry":
        data = dict(data)
        data["tensors"] = {k: TensorStats(**v) for k, v in data["tensors"].items()}
        return cls(**data)

    def summary(self, layout: ModelLayout) -> dict:
        """Per-tensor totals for reports and charts (the web app stores this)."""
        from .layers import layer_index

        tensors = {}
        for name, st in self.tensors.items():
            info = layout.tensors[name]
            blocks = partition(info, self.block_size)
            numel = [(b.row_end - b.row_start) * (info.numel // max(1, info.rows)) for b in blocks]
            total = sum(numel) or 1
            tensors[name] = {
                "delta_norm": st.delta_norm,
                "max_abs": max(st.max_abs, default=0.0),
                "nonzero_fraction": sum(f * n for f, n in zip(st.nonzero, numel)) / total,
                "bytes": info.nbytes,
                "blocks": len(st.changed),
                "zero_blocks": st.changed.count(False),
                "layer": layer_index(name),
            }
        return {"file_hashes": self.expert_files, "base_file_hashes": self.base_files,
                "tensors": tensors, "nonfinite": self.nonfinite, "seconds": self.seconds,
                "bytes_read": self.storage_bytes_read, "base_bytes_read": self.base_storage_bytes_read,
                "pass_experts": self.pass_experts, "block_size": self.block_size,
                "sketch_rank": self.sketch_rank, "sketch_bytes": self.sketch_total_bytes,
                "sketched_tensors": sum(1 for st in self.tensors.values() if st.sketch_bytes),
                "sketch_seconds": self.sketch_seconds}


def check_compatible(base: ModelLayout, expert: ModelLayout) -> None:
    """Experts must share the base's coordinate system: names, shapes and dtypes."""
    b, e = base.signature(), expert.signature()
    problems = [f"missing {n}" for n in b if n not in e]
    problems += [f"extra {n}" for n in e if n not in b]
    problems += [f"{n}: {e[n][0]}{list(e[n][1])} vs base {b[n][0]}{list(b[n][1])}"
                 for n in b if n in e and e[n] != b[n]]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise MismatchedCheckpoints(
            f"{expert.root} does not match base {base.root} ({len(problems)} differing tensors: "
            f"{shown}); experts must be fine-tunes of the same base")


class Catalog:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_catalog_dir()

    def _path(self, expert: ModelLayout, base: ModelLayout, block_size: int) -> Path:
        key = f"{expert.root}\x1f{base.root}\x1f{block_size}"
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def sketch_path(self, entry: IndexEntry) -> Path | None:
        return self.root / entry.sketch_file if entry.sketch_file else None

    def lookup(self, expert: ModelLayout, base: ModelLayout, block_size: int,
               sketch_rank: int = 0) -> IndexEntry | None:
        """The stored entry if it is still valid for the files as they are now (and, when
        ``sketch_rank`` > 0, was indexed with sketches of at least that rank)."""
        path = self._path(expert, base, block_size)
        try:
            entry = IndexEntry.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if (entry.format != CATALOG_FORMAT or entry.expert_fingerprint != fingerprint(expert)
                or entry.base_fingerprint != fingerprint(base)):
            return None
        if entry.sketch_rank < sketch_rank:  # a higher-rank sketch also holds every lower rung
            return None
        if entry.sketch_file and not (self.root / entry.sketch_file).is_file():
            return None
        return entry

    def store(self, entry: IndexEntry, expert: ModelLayout, base: ModelLayout,
              factors: dict | None = None) -> None:
        """Write the entry (and its sketch factors first, so a stored entry never names a
        missing file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(expert, base, entry.block_size)
        entry.sketch_file = ""
        if factors:
            sidecar = path.with_name(path.stem + ".sketch.safetensors")
            write_factors(sidecar, factors)
            entry.sketch_file = sidecar.name
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entry.to_json()))
        os.replace(tmp, path)

    def ensure(self, experts: list[ModelLayout], base: ModelLayout, block_size: int = DEFAULT_BLOCK_SIZE,
               control: Control | None = None, force: bool = False, sketch_rank: int = 0,
               index_rank: int | None = None) -> tuple[list[IndexEntry], list[int]]:
        """Entries for all experts, indexing the missing or stale ones in one pass over the base.
        ``sketch_rank`` > 0: entries must hold sketches of at least that rank. Missing entries are
        built with sketches of ``index_rank`` (default: ``sketch_rank``, or the default rank
        when that is 0, so that a later budgeted merge finds them).
        Returns (entries, positions of the experts that were indexed now)."""
        entries = [None if force else self.lookup(e, base, block_size, sketch_rank) for e in experts]
        todo = [i for i, e in enumerate(entries) if e is None]
        if todo:
            rank = index_rank if index_rank is not None else (sketch_rank or DEFAULT_SKETCH_RANK)
            built = build_index([experts[i] for i in todo], base, block_size, control or Control(), rank)
            for i, (entry, factors) in zip(todo, built):
                self.store(entry, experts[i], base, factors)
                entries[i] = entry
        return entries, todo


class _FileHasher:
    """sha256 of a file fed in order; anything out of order makes it re-read the file at the end."""

    def __init__(self, layout: ModelLayout):
        self.state = {}
        for f in layout.files:
            with open(f.path, "rb") as fh:
                head = fh.read(f.header_bytes)
            self.state[f.path] = [hashlib.sha256(head), f.header_bytes, True]

    def feed(self, path: Path, offset: int, data) -> None:
        st = self.state[path]
        if st[2] and offset == st[1]:
            st[0].update(data)
            st[1] += len(data)
        else:
            st[2] = False

    def digests(self) -> dict[str, str]:
        out = {}
        for path, (h, _, in_order) in self.state.items():
            if not in_order:
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(16 << 20), b""):
                        h.update(chunk)
            out[path.name] = h.hexdigest()
        return out


def build_index(experts: list[ModelLayout], base: ModelLayout, block_size: int, control: Control,
                sketch_rank: int = 0) -> list[tuple[IndexEntry, dict]]:
    """One sequential pass over the base and each expert, computing per-block delta stats and
    (``sketch_rank`` > 0) low-rank sketches. Returns (entry, {tensor: (A, B)}) per expert."""
    with retained_heap():  # per-chunk buffers are reused instead of faulted in again
        return _build_index(experts, base, block_size, control, sketch_rank)


def _build_index(experts: list[ModelLayout], base: ModelLayout, block_size: int,
                 control: Control, sketch_rank: int) -> list[tuple[IndexEntry, dict]]:
    for e in experts:
        check_compatible(base, e)
    started = time.perf_counter()
    base_hash, expert_hash = _FileHasher(base), [_FileHasher(e) for e in experts]
    stats: list[dict[str, TensorStats]] = [{} for _ in experts]
    factors: list[dict] = [{} for _ in experts]
    sketch_seconds: list[float] = []
    total = base.weight_bytes * (1 + len(experts))
    done = 0
    # Through the page cache: this pass reads everything in order, and the kernel's readahead
    # overlaps its I/O with the hashing (uncached reads would leave the disk idle meanwhile).
    # The pages it leaves behind also serve a merge that follows at once.
    base_reader = RangeReader(sequential=True, direct=False)
    readers = [RangeReader(sequential=True, direct=False) for _ in experts]  # per-expert storage bytes
    # Sketching is compute-bound and the rest of the pass is reads and hashing: one worker
    # sketches a tensor's deltas while this thread reads the next. One tensor at most waits for it, which
    # bounds the float32 deltas held to two tensors' worth.
    sketcher, pending = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sketch"), None
    try:
        for name, binfo in base.tensors.items():
            rpb = rows_per_block(binfo, block_size)
            for st in stats:
                st[name] = TensorStats(rpb, [], [], [], [], [])
            sketching = bool(tensor_rungs(binfo, sketch_rank))
            deltas: list[list[torch.Tensor]] = [[] for _ in experts]  # float32 rows, when sketching
            step = max(rpb, (CHUNK_BYTES // max(1, binfo.row_bytes)) // rpb * rpb)
            for r0 in range(0, max(binfo.rows, 1), step):
                control.check()
                r1 = min(r0 + step, binfo.rows)
                base_rows = base_reader.read_rows(binfo, r0, r1)
                base_bytes = memoryview(base_rows.view(-1).view(torch.uint8).numpy())
                base_hash.feed(binfo.file, binfo.start + r0 * binfo.row_bytes, base_bytes)
                for k, expert in enumerate(experts):
                    einfo = expert.tensors[name]
                    rows = readers[k].read_rows(einfo, r0, r1)
                    ebytes = memoryview(rows.view(-1).view(torch.uint8).numpy())
                    expert_hash[k].feed(einfo.file, einfo.start + r0 * einfo.row_bytes, ebytes)
                    _block_stats(stats[k][name], base_rows, rows, base_bytes, ebytes, rpb, binfo.row_bytes)
                    if sketching:
                        deltas[k].append((rows.float() - base_rows.float()).reshape(r1 - r0, -1))
                done += (r1 - r0) * binfo.row_bytes * (1 + len(experts))
                control.report("index", done, total)
            if sketching:
                _wait(pending)
                pending = sketcher.submit(_sketch_experts, [st[name] for st in stats], factors, name, binfo,
                                          deltas, sketch_rank, sketch_seconds)
        _wait(pending)
    finally:
        if pending is not None:
            pending.cancel()
        sketcher.shutdown(wait=True)
        for r in (base_reader, *readers):
            r.close()
    seconds = time.perf_counter() - started
    base_files = base_hash.digests()
    entries = []
    for k, expert in enumerate(experts):
        nonfinite = [n for n, s in stats[k].items() if s.nonfinite]
        entries.append((IndexEntry(
            expert=str(expert.root), base=str(base.root), block_size=block_size,
            expert_fingerprint=fingerprint(expert), base_fingerprint=fingerprint(base),
            expert_files=expert_hash[k].digests(), base_files=base_files, tensors=stats[k],
            seconds=seconds, storage_bytes_read=readers[k].storage_bytes,
            base_storage_bytes_read=base_reader.storage_bytes, pass_experts=len(experts),
            nonfinite=nonfinite, sketch_rank=sketch_rank,
            sketch_seconds=sum(sketch_seconds)), factors[k]))
    return entries


def _wait(pending: Future | None) -> None:
    if pending is not None:
        pending.result()  # re-raises what the sketch worker raised


def _sketch_experts(stats: list[TensorStats], factors: list[dict], name: str, info, deltas: list[list[torch.Tensor]],
                    rank: int, seconds: list[float]) -> None:
    """Sketch tensor ``name`` of every expert of the pass (run by the sketch worker)."""
    t0 = time.perf_counter()
    for st, found, rows in zip(stats, factors, deltas):
        _sketch_tensor(st, found, name, info, rows, rank)
    seconds.append(time.perf_counter() - t0)


def _sketch_tensor(st: TensorStats, factors: dict, name: str, info, deltas: list[torch.Tensor],
                   rank: int) -> None:
    """Sketch one expert's delta of one tensor, unless nothing changed or it holds Inf/NaN."""
    if not any(st.changed) or st.nonfinite:
        return
    rungs = tensor_rungs(info, rank)
    at, bt, residual = sketch_delta(torch.cat(deltas), rungs, st.rows_per_block, factor_dtype(info))
    st.sketch_ranks = rungs
    st.residual = [[r if changed else 0.0 for r, changed in zip(per_block, st.changed)] for per_block in residual]
    st.sketch_bytes = sketch_bytes(info, rungs[-1])
    factors[name] = (at, bt)


def _block_stats(st: TensorStats, base_rows: torch.Tensor, rows: torch.Tensor, base_bytes: memoryview,
                 ebytes: memoryview, rpb: int, row_bytes: int) -> None:
    nrows = rows.shape[0] if rows.dim() >= 2 else 1
    changed = []
    for r in range(0, nrows, rpb):
        s, e = r * row_bytes, min(r + rpb, nrows) * row_bytes
        st.hash.append(xxhash.xxh3_128_hexdigest(ebytes[s:e]))
        changed.append(ebytes[s:e] != base_bytes[s:e])
    _delta_stats(st, base_rows, rows, changed, rpb)


def _delta_stats(st: TensorStats, base_rows: torch.Tensor, rows: torch.Tensor, changed: list[bool],
                 rpb: int) -> None:
    """Each block's changed flag and, for a changed one, its delta's norm, largest |δ| and share
    of nonzero entries (non-finite values count as 0 in the norms and flag the tensor)."""
    floating = rows.dtype.is_floating_point
    work = torch.float64 if rows.dtype == torch.float64 else torch.float32
    delta = None
    for k, is_changed in enumerate(changed):
        r = k * rpb
        if not is_changed:
            st.changed.append(False)
            st.norm.append(0.0)
            st.max_abs.append(0.0)
            st.nonzero.append(0.0)
            continue
        if delta is None:
            delta = rows.to(work) - base_rows.to(work)
            if floating and not bool(torch.isfinite(rows).all()):
                st.nonfinite = True
        d = delta[r:r + rpb] if rows.dim() >= 2 else delta
        finite = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
        st.changed.append(True)
        st.norm.append(math.sqrt(float((finite * finite).sum(dtype=torch.float64))))
        st.max_abs.append(float(finite.abs().max()) if finite.numel() else 0.0)
        st.nonzero.append(float(torch.count_nonzero(d)) / max(1, d.numel()))
