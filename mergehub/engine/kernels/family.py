"""The task-arithmetic family's merge in the kernels (kernels.c): each expert's pruning rule
(and rescale factor) is found on its own thread, then one fused pass prunes, rescales,
weights, combines (sign consensus or plain sum), scales by λ and adds the base, from the
checkpoints' stored dtypes to the output's.

The math is operators/generalized.py's (with sparsify.py, consensus.py, selection.py); this
module only turns each expert's sparsifier into the kernels' terms (an ``mh_model``: levels on
|δ|, a draw threshold, a mask, a factor), as the torch statement would prune:

* magnitude (TIES): keep |δ| above the k-th largest, ties first in flat order (topk.py);
* random (DARE): the counter-based stream's draws, drawn in the kernels;
* magnitude_outliers (breadcrumbs): the two cuts of ascending |δ| order (topk.py);
* della_magprune: a keep mask per row from probabilities by rank (rows along the last dim);
* rescale: ‖δ‖₁ / ‖kept‖₁ from exact sums (operators/exact_sum.py's slots).
"""

from __future__ import annotations

import math
from functools import partial

import torch

from ..operators import get_operator
from ..operators.base import MergeContext, TensorParams
from ..operators.consensus import PlainSum
from ..operators.exact_sum import rescale_factor
from ..operators.generalized import TaskArithmeticFamily
from ..operators.random_stream import keep_threshold
from ..operators.sparsify import RESCALE_EPS, ROW_MASKS, della_probabilities, magnitude_count
from . import binding, register
from .binding import check, map_parallel, over_spans, tensor_ref
from .topk import delta_outside_smallest, delta_topk_rule

_EXPONENTS = 256  # exact L1 slots as the kernels fill them: kept entries' exponents, then dropped ones'


def model_spec(spec, x: torch.Tensor, weight: float, keep: tuple[float, float, int] = (-math.inf, -math.inf, 0),
               drop: tuple[float, float, int] = (math.inf, math.inf, 0), key: tuple[int, int] = (0, 0),
               offset: int = 0, threshold: int = 1 << 24, factor: float = 1.0,
               mask: torch.Tensor | None = None):
    """Fill ``spec`` (an ``mh_model``) for flat tensor ``x`` (which, like ``mask``, must outlive
    it); the defaults keep everything. ``offset``: the flat index of x[0] in the full tensor,
    which the draws are keyed by. ``mask``: a bit per entry of x, entries at 0 are dropped."""
    spec.x, spec.dtype = binding.ptr(x), binding.DTYPE_CODES[x.dtype]
    spec.weight, spec.factor = weight, factor
    spec.keep_before, spec.keep_after, spec.keep_cut = keep
    spec.drop_before, spec.drop_after, spec.drop_cut = drop
    spec.offset, spec.key0, spec.key1, spec.threshold = offset, key[0], key[1], threshold
    spec.mask = binding.FFI.NULL if mask is None else binding.FFI.cast("uint8_t *", mask.data_ptr())
    return spec


def _before_after(sums: torch.Tensor) -> tuple[list[int], list[int]]:
    """(slots of all entries, slots of the kept ones) from kept | dropped slots."""
    kept, dropped = sums[:_EXPONENTS].tolist(), sums[_EXPONENTS:].tolist()
    return [a + b for a, b in zip(kept, dropped)], kept


def prune_sums(base: torch.Tensor, spec, drawn: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """Exact L1 slots of |δ| over all entries and over the ones ``spec`` keeps. ``drawn`` (uint8,
    ⌈n/8⌉ bytes, or None) ← a bit per entry, 1 where the spec's draw keeps it (a mask for the
    combine). One thread: callers run one expert per thread (``map_parallel``)."""
    sums = torch.zeros(binding.LIB.MH_SLOTS, dtype=torch.int64)
    check(binding.LIB.mh_prune_sums(*tensor_ref(base), 0, base.numel(), spec, binding.ptr(sums), binding.ptr(drawn)))
    return _before_after(sums)


def della_masks(base: torch.Tensor, jobs: list[tuple], width: int,
                sums: bool) -> list[tuple[list[int], list[int]] | None]:
    """DELLA's keep masks, all experts at once on all cores. ``base`` is flat (rows × ``width``);
    each job is (x, offset, key, probs, mask): flat expert ``x``, the flat index of its first
    entry in the full tensor, its stream key, float32 keep probabilities by rank in a row
    (length ``width``), and the ``mask`` to fill (uint8, a bit per entry: entry j is bit j % 8
    of byte j // 8). With ``sums``, each job's exact L1 slots come back too, from the same pass."""
    rows = base.numel() // width
    per_task = -(-rows * len(jobs) // (4 * binding.THREADS))  # a few tasks per thread,
    per_task = max(8, -(-per_task // 8) * 8)  # in multiples of 8 rows: each starts on a mask byte
    tasks = [(i, r, min(r + per_task, rows)) for i in range(len(jobs)) for r in range(0, rows, per_task)]

    def run(task) -> tuple[int, torch.Tensor | None]:
        i, r0, r1 = task
        x, offset, key, probs, mask = jobs[i]
        part = torch.zeros(binding.LIB.MH_SLOTS, dtype=torch.int64) if sums else None
        check(binding.LIB.mh_della_mask(*tensor_ref(x), *tensor_ref(base), width, r0, r1, offset, key[0], key[1],
                                        binding.ptr(probs), binding.ptr(mask), binding.ptr(part)))
        return i, part

    totals: list[torch.Tensor | None] = [torch.zeros(binding.LIB.MH_SLOTS, dtype=torch.int64) if sums else None
                                         for _ in jobs]
    for i, part in map_parallel(run, tasks):
        if part is not None:
            totals[i] += part
    return [None if t is None else _before_after(t) for t in totals]


def family_combine(base: torch.Tensor, specs, consensus: bool, normalize: bool, lam: float, out: torch.Tensor,
                   sum_divisor: float) -> torch.Tensor:
    """``out`` ← base + λ·combine(pruned, weighted deltas), computed in float32 and rounded to
    ``out``'s dtype: the sign consensus (with ``normalize``: divided by the agreeing weights)
    or a plain sum (with ``normalize``: divided by ``sum_divisor``, as a float32)."""
    def run(span: tuple[int, int]) -> None:
        binding.LIB.mh_family_combine(*tensor_ref(base), span[0], span[1], len(specs), specs, int(consensus),
                                      int(normalize), sum_divisor, lam, *tensor_ref(out))

    over_spans(base.numel(), run)
    return out


# -- the merge ------------------------------------------------------------------------------

def della_width(shape: tuple[int, ...]) -> int | None:
    """The row width DELLA ranks over when the kernels can rank it (rows contiguous and at least
    2 wide: a 1-D tensor is one row, a 2-D one ranks along its last dim), else None."""
    width = shape[-1] if len(shape) == 2 else math.prod(shape) if len(shape) == 1 else 0
    return width if width >= 2 else None


def merge(op: TaskArithmeticFamily, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
          ctx: MergeContext, out_dtype: torch.dtype) -> torch.Tensor:
    """The kernel of ``op``'s "merge" step: base + λ·combine_k(w_k·sparsify(x_k − base)) in ``out_dtype``."""
    flat_base = base.reshape(-1)
    pruned_away = [op.sparsifier is not None and m["density"] <= 0 for m in p.models]
    # models that add nothing: unread (passed as the base itself) or pruned to nothing
    used = [(k, x.reshape(-1)) for k, (x, gone) in enumerate(zip(inputs, pruned_away))
            if not gone and x.data_ptr() != base.data_ptr()]
    out = ctx.empty(base.shape, out_dtype).view(-1)
    offset = ctx.flat_start(base.shape)
    masks = _della_masks(op, flat_base, used, p, ctx, offset, base.shape) if op.sparsifier == "della_magprune" else {}
    # DARE with rescale draws once, in the rescale's pass, and keeps the draws as these bits
    # for the combine (the masks must outlive the specs that point at them)
    drawn = {k: ctx.empty((-(-flat_base.numel() // 8),), torch.uint8) for k, _ in used
             if op.sparsifier == "random" and p.shared["rescale"] and ctx.rescale_factors is None
             and 0 < p.models[k]["density"] < 1}
    specs = binding.FFI.new("mh_model[]", len(used))
    map_parallel(lambda i: _spec(specs[i], op, used[i][1], flat_base, used[i][0], p, ctx, offset,
                                 *masks.get(used[i][0], (None, None)), drawn=drawn.get(used[i][0])),
                 list(range(len(used))))
    family_combine(flat_base, specs, op.consensus, p.shared["normalize"], p.shared["lambda"], out,
                   sum_divisor=PlainSum.divisor_of(p.per_model("weight")))
    return out.view(base.shape)


def _della_masks(op, base: torch.Tensor, used: list[tuple[int, torch.Tensor]], p: TensorParams,
                 ctx: MergeContext, offset: int, shape) -> dict[int, tuple]:
    """(keep mask (a bit per entry), exact L1 slots or None) of each model that prunes:
    sparsify.della_magprune's draws against probabilities by rank in the row; the slots are
    measured in the same pass when ``rescale`` needs them."""
    width = della_width(tuple(shape))
    pruned, jobs = [], []
    for k, x in used:
        model = p.models[k]
        if 0 < model["density"] < 1:
            probs = della_probabilities(model["density"], model["epsilon"], width)
            pruned.append(k)
            jobs.append((x, offset, ctx.stream_key(k), probs, ctx.empty((-(-base.numel() // 8),), torch.uint8)))
    sums = della_masks(base, jobs, width, p.shared["rescale"] and ctx.rescale_factors is None)
    return {k: (job[4], job_sums) for k, job, job_sums in zip(pruned, jobs, sums)}


def _spec(spec, op, x: torch.Tensor, base: torch.Tensor, k: int, p: TensorParams, ctx: MergeContext, offset: int,
          mask: torch.Tensor | None = None, mask_sums: tuple | None = None, drawn: torch.Tensor | None = None):
    """Fill ``spec`` with how model k is pruned (sparsify.py's rules, as levels, draws and a
    rescale factor). ``drawn``: where the rescale's pass stores the random draws' decisions as a
    bit per entry; the combine then reads those bits instead of drawing again."""
    model = p.models[k]
    density, n = model["density"], base.numel()
    rule: dict = {}
    if 0 < density < 1 and op.sparsifier is not None:
        if op.sparsifier == "magnitude" and ctx.selections is not None:  # rows of a big tensor
            if ctx.selections[k] is not None:
                rule["keep"] = ctx.selections[k].shifted(offset).levels()
        elif op.sparsifier == "magnitude":
            count = magnitude_count(density, n)
            if count < n:
                rule["keep"] = delta_topk_rule(x, base, count).levels()
        elif op.sparsifier == "random":
            rule.update(key=ctx.stream_key(k), offset=offset, threshold=keep_threshold(density))
        elif op.sparsifier == "della_magprune":
            rule["mask"] = mask
        else:  # magnitude_outliers: keep ascending ranks [n_bottom, n_bottom + target)
            target, n_top = int(density * n), int(model["gamma"] * n)
            n_bottom = max(0, n - target - n_top)
            cuts = {"keep": n_bottom} if n_bottom > 0 else {}
            if n_bottom + target <= 0:
                rule["drop"] = (-math.inf, -math.inf, 0)
            elif n_bottom + target < n:
                cuts["drop"] = n_bottom + target
            if cuts:  # both cuts found together (shared passes)
                rule.update(zip(cuts, delta_outside_smallest(x, base, list(cuts.values()))))
        if p.shared["rescale"] and ctx.rescale_factors is not None:  # rows of a big tensor
            factor = ctx.rescale_factors[k]
            rule["factor"] = 1.0 if factor is None else factor
        elif p.shared["rescale"]:
            sums = mask_sums or prune_sums(base, model_spec(binding.FFI.new("mh_model *"), x, 1.0, **rule), drawn)
            factor = rescale_factor(*sums, RESCALE_EPS)
            rule["factor"] = 1.0 if factor is None else factor
            if drawn is not None:
                del rule["key"], rule["offset"], rule["threshold"]
                rule["mask"] = drawn
    return model_spec(spec, x, model["weight"], **rule)


def rescale_sums(op: TaskArithmeticFamily, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                 ctx: MergeContext, out_dtype: torch.dtype) -> list[tuple[list[int], list[int]] | None]:
    """The kernel of ``op``'s "rescale_sums" step (``Operator.rescale_sums``): per input, the exact
    L1 slots of its delta over these rows, before and after its mask."""
    flat_base = base.reshape(-1)
    offset = ctx.flat_start(base.shape)
    rescaled = [(k, x.reshape(-1)) for k, (x, model) in enumerate(zip(inputs, p.models))
                if 0 < model["density"] < 1]
    sums: list = [None] * len(inputs)
    if op.sparsifier == "della_magprune":
        for k, (_, job_sums) in _della_masks(op, flat_base, rescaled, p, ctx, offset, base.shape).items():
            sums[k] = job_sums
        return sums

    def draw(item: tuple[int, torch.Tensor]) -> None:
        k, x = item
        spec = model_spec(binding.FFI.new("mh_model *"), x, 1.0, key=ctx.stream_key(k), offset=offset,
                          threshold=keep_threshold(p.models[k]["density"]))
        sums[k] = prune_sums(flat_base, spec)

    map_parallel(draw, rescaled)
    return sums


def _della_rows(p: TensorParams, shape: tuple[int, ...]) -> bool:
    return della_width(shape) is not None


# The methods whose kernel buys ≥ 20% end to end on the reference family (docs/benchmarks.md).
KERNEL_METHODS = ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear")

for _name in KERNEL_METHODS:
    _op = get_operator(_name)
    _accepts = _della_rows if _op.sparsifier == "della_magprune" else None
    register(_name, "merge", partial(merge, _op), accepts=_accepts)
    if _op.sparsifier in ROW_MASKS:
        register(_name, "rescale_sums", partial(rescale_sums, _op), accepts=_accepts)
