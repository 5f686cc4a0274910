"""Choose which expert delta blocks to read under an I/O budget.

The access set A ⊆ {(k, t, b)} is built greedily by value per byte: each changed block scores
w_kt·‖δ_ktb‖₂ / bytes (w = |c_k| for additive operators, |weight| otherwise) and blocks are
taken best-first while they fit — a 0/1 knapsack greedy, so planned bytes ≤ budget by
construction. Unchanged blocks (bytes identical to the base) are never planned: δ = 0 there.
Ties are broken by (tensor order, expert, block), so the same inputs give the same plan.

Certificate (additive operators, θ = θ₀ + Σ_k c_k δ_k): blocks at different positions are
disjoint coordinates, so with e_tb = Σ_{k:(k,t,b)∉A} |c_kt|·‖δ_ktb‖₂,

    ‖θ_A − θ_full‖₂ ≤ sqrt(Σ_tb e_tb²) ≤ Σ_{(k,t,b)∉A} |c_kt|·‖δ_ktb‖₂.

We report the first (tighter) bound; it holds up to the working dtype's rounding.

Sketches (sketch.py). When the catalog holds a sketch of δ_kt (factors A·Bᵀ, with rungs
r = 1, 2, 4, … and per-block residuals ρ_ktb(r) = ‖δ_ktb − (A_r·B_rᵀ)_b‖₂), a plan may also
read a rank-r prefix of it: r·(rows + columns) factor entries, whose bytes count against the
budget. Every changed block of (k, t) that is not read then holds base + (A_r·B_rᵀ)_b instead
of the base, so the block's omitted error drops from ‖δ_ktb‖₂ to ρ_ktb(r). The certificate
keeps its form with e_tb = Σ_k |c_kt|·ε_ktb, where ε_ktb is 0 for a read block, ρ_ktb(r) for a
sketched one and ‖δ_ktb‖₂ otherwise: the norm of the omitted residual.

With sketches the plan is a lazy greedy over blocks and rung upgrades by omitted energy
removed per byte (w²·ε², which adds up over blocks): moving (k, t) up one rung removes
Σ_b w²(ε_b² − ρ_b(next)²) over its unread changed blocks for the extra columns' bytes; a block
removes w²ε_b² given the choices so far. Values only fall as the plan grows, so an item whose
value fell is put back and the next best is taken. Small rungs first spread a budget over
every tensor; larger ones go where the spectrum decays slowly. That plan is kept only when it
leaves less omitted energy than the blocks-only plan (a budget smaller than the sketches falls
back to it), and never at a budget that reads every changed block: a full-budget merge reads
exactly what it did without sketches.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from dataclasses import dataclass, field

from .blocks import block_count, partition
from .budget import Budget, base_only_warning
from .catalog import IndexEntry
from .config_types import MergeConfig
from .errors import BudgetError, ReplayMismatch
from .layers import count_layers
from .layout import ModelLayout
from .sketch import sketch_bytes


@dataclass(frozen=True)
class _Sketch:
    """What the catalog offers for one (expert, tensor): rungs ≤ the merge's rank, the residual
    per rung and block, and the bytes of one rank of factors."""

    rungs: list[int]
    residual: list[list[float]]
    bytes_per_rank: int

    def nbytes(self, rank: int) -> int:
        return rank * self.bytes_per_rank

    def error(self, rank: int, b: int) -> float:
        return self.residual[self.rungs.index(rank)][b]  # rungs: a handful (1, 2, 4, … R)


@dataclass
class Plan:
    block_size: int
    budget: Budget
    budget_bytes: int
    full_expert_bytes: int
    nonzero_expert_bytes: int
    planned_expert_bytes: int
    blocks_planned: int
    blocks_total: int
    certificate: float | None
    access: list[dict[str, list[int]]]  # per expert: tensor -> sorted planned block indices
    per_expert: list[dict]
    digest: str = ""
    inputs: dict = field(default_factory=dict)  # file hashes the digest covers
    sketch_rank: int = 0  # the highest sketch rank the plan may use (0: none)
    sketches: list[dict[str, int]] = field(default_factory=list)  # per expert: tensor -> rank read
    sketch_bytes: int = 0  # of planned_expert_bytes, the sketches' share
    sketches_available: int = 0  # (expert, tensor) pairs with a sketch

    @property
    def block_bytes(self) -> int:
        return self.planned_expert_bytes - self.sketch_bytes

    @property
    def sketches_planned(self) -> int:
        return sum(len(s) for s in self.sketches)

    def warnings(self) -> list[str]:
        warning = base_only_warning(self.budget.text, self.planned_expert_bytes, self.nonzero_expert_bytes)
        return [warning] if warning else []

    def planned(self, k: int, tensor: str) -> set[int]:
        return set(self.access[k].get(tensor, ()))

    def to_dict(self) -> dict:
        return {
            "budget": self.budget.text,
            "budget_bytes": self.budget_bytes,
            "full_expert_bytes": self.full_expert_bytes,
            "nonzero_expert_bytes": self.nonzero_expert_bytes,
            "planned_expert_bytes": self.planned_expert_bytes,
            "blocks_planned": self.blocks_planned,
            "blocks_total": self.blocks_total,
            "certificate": self.certificate,
            "plan_digest": self.digest,
            "block_size": self.block_size,
            "per_expert": self.per_expert,
            "sketch_rank": self.sketch_rank,
            "sketch_bytes": self.sketch_bytes,
            "block_bytes": self.block_bytes,
            "sketches_planned": self.sketches_planned,
            "sketches_available": self.sketches_available,
        }

    def access_ranges(self) -> list[dict[str, list[list[int]]]]:
        """The access set in run-length form [[first, last], ...] for manifests."""
        out = []
        for per_tensor in self.access:
            compact = {}
            for t, blocks in per_tensor.items():
                runs: list[list[int]] = []
                for b in blocks:
                    if runs and runs[-1][1] == b - 1:
                        runs[-1][1] = b
                    else:
                        runs.append([b, b])
                compact[t] = runs
            out.append(compact)
        return out


def expand_ranges(compact: list[dict[str, list[list[int]]]]) -> list[dict[str, list[int]]]:
    return [{t: [b for lo, hi in runs for b in range(lo, hi + 1)] for t, runs in per.items()}
            for per in compact]


def make_plan(config: MergeConfig, base: ModelLayout | None, experts: list[ModelLayout],
              entries: list[IndexEntry] | None, budget: Budget, block_size: int, seed: int = 0,
              access: list[dict[str, list[int]]] | None = None, sketch_rank: int = 0,
              sketches: list[dict[str, int]] | None = None) -> Plan:
    """Plan the expert reads. ``sketch_rank`` > 0 lets the plan use the catalog's sketches up
    to that rank. ``access`` (and ``sketches``) replay a recorded plan instead of choosing one."""
    op = config.operator
    full = sum(e.weight_bytes for e in experts)
    budget_bytes = budget.resolve(full)
    uses_base = base is not None and op.base != "ignored"
    if not uses_base:
        if not budget.is_full(full):
            raise BudgetError(f"{config.merge_method} without a base model reads whole models: only "
                              "budget 1.0 (or a size ≥ the expert bytes) is possible")
        return _full_read_plan(config, experts, budget, budget_bytes, block_size, full)

    names = list(base.tensors)
    layers = count_layers(names)
    items = []  # (-score, tensor_order, k, b, nbytes)
    coeffs: dict[str, list[float] | None] = {}
    weights_of: dict[str, list[float]] = {}
    blocks_total = nonzero = 0
    norms: dict[tuple[int, str, int], float] = {}
    sizes_of: dict[str, list[int]] = {}
    sketchable: dict[tuple[int, str], _Sketch] = {}
    for t_order, name in enumerate(names):
        p = config.resolve(name, layers)
        coeffs[name] = op.coefficients(p)
        weights = weights_of[name] = op.planning_weights(p)
        info = base.tensors[name]
        sizes = sizes_of[name] = [b.nbytes for b in partition(info, block_size)]
        for k, entry in enumerate(entries):
            st = entry.tensors[name]
            blocks_total += len(sizes)
            rungs = [r for r in st.sketch_ranks if r <= sketch_rank]
            if rungs:
                sketchable[(k, name)] = _Sketch(rungs, st.residual[:len(rungs)], sketch_bytes(info, 1))
            for b, changed in enumerate(st.changed):
                if not changed:
                    continue
                nonzero += sizes[b]
                norms[(k, name, b)] = st.norm[b]
                score = weights[k] * st.norm[b] / max(1, sizes[b])
                items.append((-score, t_order, k, b, sizes[b]))

    sketched: list[dict[str, int]] = [{} for _ in experts]
    if access is not None:
        _check_access(access, sizes_of, len(experts))
        chosen = [{t: sorted(bs) for t, bs in per.items() if bs} for per in access]
        if sketches:
            sketched = _check_sketches(sketches, sketchable, len(experts))
    else:
        chosen = _greedy_blocks(items, names, len(experts), budget_bytes)
        if sketchable and nonzero > budget_bytes:
            relative = _relative_weights(weights_of, norms, len(experts))
            candidate = _greedy_with_sketches(names, sizes_of, norms, _capped(sketchable, budget_bytes), relative,
                                              len(experts), budget_bytes)
            if (_omitted_energy(*candidate, norms, sketchable, relative)
                    < _omitted_energy(chosen, sketched, norms, sketchable, relative)):
                chosen, sketched = candidate
    block_planned = [sum(sizes_of[t][b] for t, bs in chosen[k].items() for b in bs) for k in range(len(experts))]
    sketch_planned = [sum(sketchable[(k, t)].nbytes(r) for t, r in sketched[k].items()) for k in range(len(experts))]

    certificate = _certificate(chosen, sketched, norms, sketchable, coeffs)
    per_expert = []
    for k, (e, entry) in enumerate(zip(experts, entries)):
        per_expert.append({
            "name": config.models[k].name or str(e.root), "path": str(e.root),
            "full_bytes": e.weight_bytes,
            "nonzero_bytes": sum(sizes_of[t][b] for (kk, t, b) in norms if kk == k),
            "planned_bytes": block_planned[k] + sketch_planned[k],
            "sketch_bytes": sketch_planned[k],
            "blocks_planned": sum(len(bs) for bs in chosen[k].values()),
            "blocks_total": sum(len(entry.tensors[t].changed) for t in names),
            "sketches_planned": len(sketched[k]),
        })
    plan = Plan(block_size, budget, budget_bytes, full, nonzero, sum(block_planned) + sum(sketch_planned),
                sum(len(bs) for per in chosen for bs in per.values()), blocks_total, certificate,
                chosen, per_expert, sketch_rank=sketch_rank if sketchable else 0,
                sketches=[{t: s[t] for t in names if t in s} for s in sketched],
                sketch_bytes=sum(sketch_planned),
                sketches_available=len(sketchable))
    plan.inputs = {"base": entries[0].base_files if entries else {},
                   "experts": [e.expert_files for e in entries]}
    plan.digest = plan_digest(config, plan, seed)
    return plan


def _greedy_blocks(items, names: list[str], n_experts: int, budget_bytes: int) -> list[dict[str, list[int]]]:
    """Blocks only: best value per byte first while they fit."""
    chosen: list[dict[str, list[int]]] = [{} for _ in range(n_experts)]
    planned = 0
    for _, t_order, k, b, nbytes in sorted(items):
        if planned + nbytes <= budget_bytes:
            chosen[k].setdefault(names[t_order], []).append(b)
            planned += nbytes
    for per in chosen:
        for bs in per.values():
            bs.sort()
    return chosen


def _capped(sketchable: dict[tuple[int, str], _Sketch], budget_bytes: int) -> dict[tuple[int, str], _Sketch]:
    """Rungs up to the largest rank at which every sketch fits in the budget together (at least
    rank 1): no tensor's sketch grows past what all of them could have while others go without."""
    def all_at(rank: int) -> int:
        return sum(sk.nbytes(max((r for r in sk.rungs if r <= rank), default=0)) for sk in sketchable.values())

    ranks = sorted({r for sk in sketchable.values() for r in sk.rungs})
    cap = max((r for r in ranks if all_at(r) <= budget_bytes), default=ranks[0])
    out = {}
    for key, sk in sketchable.items():
        keep = [r for r in sk.rungs if r <= cap]
        if keep:
            out[key] = _Sketch(keep, sk.residual[:len(keep)], sk.bytes_per_rank)
    return out


def _relative_weights(weights_of, norms, n_experts: int) -> dict[str, list[float]]:
    """w_kt / ‖δ_kt‖₂: each tensor's omitted energy counted relative to its whole delta."""
    energy: dict[tuple[int, str], float] = {}
    for (k, t, _), norm in norms.items():
        energy[(k, t)] = energy.get((k, t), 0.0) + norm * norm
    return {t: [w / math.sqrt(energy[(k, t)]) if energy.get((k, t)) else 0.0 for k, w in enumerate(ws)]
            for t, ws in weights_of.items()}


def _greedy_with_sketches(names, sizes_of, norms, sketchable: dict[tuple[int, str], _Sketch], weights_of,
                          n_experts: int, budget_bytes: int) -> tuple[list[dict[str, list[int]]], list[dict[str, int]]]:
    """Lazy greedy over blocks and sketch rung upgrades by omitted energy removed per byte."""
    order = {t: i for i, t in enumerate(names)}
    read: list[dict[str, set[int]]] = [{} for _ in range(n_experts)]
    rank: list[dict[str, int]] = [{} for _ in range(n_experts)]  # the rung each (k, t) reads now
    changed_of: dict[tuple[int, str], list[int]] = {}
    for (k, t, b) in norms:
        changed_of.setdefault((k, t), []).append(b)

    def error(k: int, t: str, b: int, r: int) -> float:
        return sketchable[(k, t)].error(r, b) if r else norms[(k, t, b)]

    def next_rung(k: int, t: str) -> int | None:
        sk, now = sketchable[(k, t)], rank[k].get(t, 0)
        return next((r for r in sk.rungs if r > now), None)

    def gain_and_cost(k: int, t: str, b: int) -> tuple[float, int]:  # b = -1: the next rung of (k, t)
        w, now = weights_of[t][k], rank[k].get(t, 0)  # products, not **: a huge weight gives inf, not an error
        if b >= 0:
            e = error(k, t, b, now)
            return w * w * e * e, sizes_of[t][b]
        up = next_rung(k, t)
        taken = read[k].get(t, ())
        removed = 0.0
        for b in changed_of[(k, t)]:
            if b not in taken:
                e_now, e_up = error(k, t, b, now), error(k, t, b, up)
                removed += max(0.0, e_now * e_now - e_up * e_up)
        gain = w * w * removed
        return gain, sketchable[(k, t)].nbytes(up - now)

    def value(k: int, t: str, b: int) -> tuple[float, int]:
        gain, cost = gain_and_cost(k, t, b)
        return -gain / max(1, cost), cost

    heap = [(value(k, t, b)[0], order[t], k, b) for (k, t, b) in norms]
    heap += [(value(k, t, -1)[0], order[t], k, -1) for (k, t) in sketchable if (k, t) in changed_of]
    heapq.heapify(heap)
    planned = 0
    while heap:
        queued, t_order, k, b = heapq.heappop(heap)
        t = names[t_order]
        now, nbytes = value(k, t, b)
        if planned + nbytes > budget_bytes:
            continue
        if now > queued and heap and now > heap[0][0]:
            heapq.heappush(heap, (now, t_order, k, b))  # worth less than when queued: requeue
            continue
        planned += nbytes
        if b >= 0:
            read[k].setdefault(t, set()).add(b)
            continue
        rank[k][t] = next_rung(k, t)
        if next_rung(k, t) is not None:
            heapq.heappush(heap, (value(k, t, -1)[0], t_order, k, -1))
    chosen = [{t: sorted(bs) for t, bs in per.items()} for per in read]
    return chosen, rank


def _omitted(chosen, sketched, norms, sketchable, weights) -> dict[tuple[str, int], float]:
    """Per block position, Σ_k weight_k·ε_ktb of what the plan leaves out."""
    read = {(k, t, b) for k, per in enumerate(chosen) for t, bs in per.items() for b in bs}
    per_position: dict[tuple[str, int], float] = {}
    for (k, t, b), norm in norms.items():
        if (k, t, b) in read:
            continue
        r = sketched[k].get(t)
        err = sketchable[(k, t)].error(r, b) if r else norm
        per_position[(t, b)] = per_position.get((t, b), 0.0) + weights[t][k] * err
    return per_position


def _omitted_energy(chosen, sketched, norms, sketchable, weights_of) -> float:
    return sum(e * e for e in _omitted(chosen, sketched, norms, sketchable, weights_of).values())


def _certificate(chosen, sketched, norms, sketchable, coeffs) -> float | None:
    if any(c is None for c in coeffs.values()):
        return None
    absolute = {t: [abs(c) for c in cs] for t, cs in coeffs.items()}
    return math.sqrt(sum(e * e for e in _omitted(chosen, sketched, norms, sketchable, absolute).values()))


def _check_sketches(sketches, sketchable, n_experts: int) -> list[dict[str, int]]:
    """A recorded sketch set must name rungs the catalog holds within the plan's rank."""
    if len(sketches) != n_experts:
        raise ReplayMismatch(f"the recorded sketches cover {len(sketches)} experts but the config has "
                             f"{n_experts}; replay needs the original config")
    for k, per in enumerate(sketches):
        for t, r in per.items():
            if (k, t) not in sketchable or r not in sketchable[(k, t)].rungs:
                raise ReplayMismatch(f"the recorded plan reads a rank-{r} sketch of {t!r} (expert {k + 1}) "
                                     "that the catalog does not hold; re-index with the recorded "
                                     "--sketch-rank, or replay against the original catalog")
    return [dict(per) for per in sketches]


def _check_access(access, sizes_of: dict[str, list[int]], n_experts: int) -> None:
    """A recorded access set must fit these inputs: one entry per expert, known tensors, blocks in range."""
    if len(access) != n_experts:
        raise ReplayMismatch(f"the recorded access set covers {len(access)} experts but the config has "
                             f"{n_experts}; replay needs the original config")
    for per in access:
        for t, bs in per.items():
            if t not in sizes_of:
                raise ReplayMismatch(f"the recorded access set names tensor {t!r}, which the base lacks; "
                                     "replay needs the original checkpoints")
            if any(not 0 <= b < len(sizes_of[t]) for b in bs):
                raise ReplayMismatch(f"the recorded access set names blocks of {t!r} beyond its "
                                     f"{len(sizes_of[t])} blocks; replay needs the original block size")


def _full_read_plan(config, experts, budget, budget_bytes, block_size, full) -> Plan:
    access, total = [], 0
    for e in experts:
        per = {n: list(range(block_count(t, block_size))) for n, t in e.tensors.items()}
        total += sum(len(v) for v in per.values())
        access.append(per)
    per_expert = [{"name": m.name or str(e.root), "path": str(e.root), "full_bytes": e.weight_bytes,
                   "nonzero_bytes": e.weight_bytes, "planned_bytes": e.weight_bytes,
                   "blocks_planned": sum(len(v) for v in a.values()),
                   "blocks_total": sum(len(v) for v in a.values())}
                  for m, e, a in zip(config.models, experts, access)]
    plan = Plan(block_size, budget, budget_bytes, full, full, full, total, total, None, access, per_expert)
    # Without a catalog there are no content hashes before reading: identify inputs by stat.
    plan.inputs = {"experts": [{f.path.name: f"size:{f.size}" for f in e.files} for e in experts]}
    plan.digest = plan_digest(config, plan, 0)
    return plan


def plan_digest(config: MergeConfig, plan: Plan, seed: int) -> str:
    """sha256 over input file hashes, operator parameters, seed, block size, budget and access set."""
    body = {
        "method": config.merge_method,
        "parameters": config.parameters,  # normalised: a replayed config gives the same
        "model_parameters": [m.parameters for m in config.models],
        "dtype": str(config.dtype), "out_dtype": str(config.out_dtype),
        "seed": seed, "block_size": plan.block_size, "budget_bytes": plan.budget_bytes,
        "inputs": plan.inputs, "access": plan.access_ranges(),
    }
    if plan.sketch_bytes:  # a plan without sketches keeps the digest it had before them
        body["sketch_rank"], body["sketches"] = plan.sketch_rank, plan.sketches
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
