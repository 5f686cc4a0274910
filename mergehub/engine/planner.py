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
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

from .blocks import block_count, partition, parse_size
from .catalog import IndexEntry
from .config import count_layers
from .config_types import MergeConfig
from .errors import BudgetError, ConfigError, ReplayMismatch
from .layout import ModelLayout

_FRACTION = re.compile(r"^\s*[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?\s*$")


@dataclass(frozen=True)
class Budget:
    """Either a fraction of the full expert-read bytes in (0, 1] or an absolute byte count."""

    text: str
    fraction: float | None = None
    nbytes: int | None = None

    def resolve(self, full_bytes: int) -> int:
        if self.fraction is not None:
            return full_bytes if self.fraction >= 1.0 else int(math.floor(self.fraction * full_bytes))
        return self.nbytes

    def is_full(self, full_bytes: int) -> bool:
        return self.resolve(full_bytes) >= full_bytes


def parse_budget(value: str | float | int | None) -> Budget:
    """'0.25' or 0.25 -> fraction; '512MB' / '2GiB' / '1000000B' -> bytes."""
    if value is None:
        return Budget("1.0", fraction=1.0)
    if isinstance(value, bool):
        raise BudgetError(f"budget {value!r} is not a number or a size")
    if isinstance(value, (int, float)) or _FRACTION.match(str(value)):
        try:
            f = float(value)
        except ValueError:
            raise BudgetError(f"budget {value!r} is not a number") from None
        if not math.isfinite(f) or f <= 0 or f > 1:
            raise BudgetError(f"budget {value!r} must be a fraction in (0, 1] of the expert bytes, "
                              "or a size such as 512MB or 2GiB")
        return Budget(str(value), fraction=f)
    try:
        return Budget(str(value), nbytes=parse_size(str(value), "budget"))
    except ConfigError:
        raise BudgetError(f"budget {value!r} is neither a fraction in (0, 1] nor a size such as "
                          "512MB or 2GiB") from None


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
              access: list[dict[str, list[int]]] | None = None) -> Plan:
    """Plan the expert reads. ``access`` replays a recorded access set instead of choosing one."""
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
    items = []  # (score, tensor_order, k, b, nbytes, norm)
    coeffs: dict[str, list[float] | None] = {}
    blocks_total = nonzero = 0
    norms: dict[tuple[int, str, int], float] = {}
    sizes_of: dict[str, list[int]] = {}
    for t_order, name in enumerate(names):
        p = config.resolve(name, layers)
        coeffs[name] = op.coefficients(p)
        weights = op.planning_weights(p)
        info = base.tensors[name]
        sizes = sizes_of[name] = [b.nbytes for b in partition(info, block_size)]
        for k, entry in enumerate(entries):
            st = entry.tensors[name]
            blocks_total += len(sizes)
            for b, changed in enumerate(st.changed):
                if not changed:
                    continue
                nonzero += sizes[b]
                norms[(k, name, b)] = st.norm[b]
                score = weights[k] * st.norm[b] / max(1, sizes[b])
                items.append((-score, t_order, k, b, sizes[b]))

    chosen: list[dict[str, list[int]]] = [{} for _ in experts]
    planned = 0
    if access is not None:
        _check_access(access, sizes_of, len(experts))
        chosen = [{t: sorted(bs) for t, bs in per.items() if bs} for per in access]
        planned = sum(sizes_of[t][b] for per in chosen for t, bs in per.items() for b in bs)
    else:
        items.sort()
        for _, t_order, k, b, nbytes in items:
            if planned + nbytes <= budget_bytes:
                chosen[k].setdefault(names[t_order], []).append(b)
                planned += nbytes
        for per in chosen:
            for bs in per.values():
                bs.sort()

    certificate = _certificate(chosen, norms, coeffs)
    per_expert = []
    for k, (e, entry) in enumerate(zip(experts, entries)):
        per_expert.append({
            "name": config.models[k].name or str(e.root), "path": str(e.root),
            "full_bytes": e.weight_bytes,
            "nonzero_bytes": sum(sizes_of[t][b] for (kk, t, b) in norms if kk == k),
            "planned_bytes": sum(sizes_of[t][b] for t, bs in chosen[k].items() for b in bs),
            "blocks_planned": sum(len(bs) for bs in chosen[k].values()),
            "blocks_total": sum(len(entry.tensors[t].changed) for t in names),
        })
    plan = Plan(block_size, budget, budget_bytes, full, nonzero, planned,
                sum(len(bs) for per in chosen for bs in per.values()), blocks_total, certificate,
                chosen, per_expert)
    plan.inputs = {"base": entries[0].base_files if entries else {},
                   "experts": [e.expert_files for e in entries]}
    plan.digest = plan_digest(config, plan, seed)
    return plan


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


def _certificate(chosen, norms, coeffs) -> float | None:
    if any(c is None for c in coeffs.values()):
        return None
    read = {(k, t, b) for k, per in enumerate(chosen) for t, bs in per.items() for b in bs}
    per_position: dict[tuple[str, int], float] = {}
    for (k, t, b), norm in norms.items():
        if (k, t, b) not in read:
            per_position[(t, b)] = per_position.get((t, b), 0.0) + abs(coeffs[t][k]) * norm
    return math.sqrt(sum(e * e for e in per_position.values()))


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
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
