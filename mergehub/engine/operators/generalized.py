"""The task-arithmetic family (mergekit's GeneralizedTaskArithmeticMerge), one code path.

For each model k: δ_k = x_k − base; sparsify δ_k alone (sparsify.py); d_k = w_k·δ_k; combine
the d_k with a plain sum or the TIES sign consensus (consensus.py) into (mixed, divisor);
if normalize: mixed /= divisor; mixed *= λ; out = base + mixed.

| method           | sparsifier          | consensus | normalize | rescale |
| task_arithmetic  | none                | no        | false     | false   |
| ties             | magnitude           | sum       | true      | false   |
| dare_ties        | random              | sum       | false     | true    |
| dare_linear      | random              | no        | false     | true    |
| breadcrumbs      | magnitude_outliers  | no        | false     | false   |
| breadcrumbs_ties | magnitude_outliers  | sum       | false     | false   |
| della            | della_magprune      | sum       | true      | true    |
| della_linear     | della_magprune      | no        | false     | true    |
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import ConfigError
from . import params as P
from .base import MergeContext, Operator, Param, TensorParams
from .consensus import DIVISOR_EPS, PlainSum, SignConsensus
from .registry import register
from .selection import TopKRule, tiles, topk_rule
from .sparsify import ROW_MASKS, SPARSIFIERS, l1_sums, magnitude_count

_DENSITY_HELP = {
    None: "Unused without sparsification (kept for mergekit compatibility).",
    "magnitude": "Fraction of this model's delta entries kept, by largest magnitude.",
    "random": "Probability that each delta entry is kept (random drop).",
    "magnitude_outliers": "Fraction of delta entries kept after dropping the gamma largest.",
    "della_magprune": "Mean keep probability; larger deltas in a row are kept more often.",
}


class TaskArithmeticFamily(Operator):
    base = "required"
    min_inputs = 1
    sparsifier: ClassVar[str | None] = None
    zero_delta_identity = True  # all deltas zero -> mixed = 0 -> out = base
    stored_dtype_inputs = True  # torch.sub(x, base) promotes x exactly
    consensus: ClassVar[bool] = False
    default_normalize: ClassVar[bool] = False
    default_rescale: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        declared: list[Param] = [
            P.INT8_MASK, P.normalize(cls.default_normalize), P.rescale(cls.default_rescale),
            Param("lambda", "global", float, 1.0, help="Scale of the combined delta."),
            P.WEIGHT, P.density(_DENSITY_HELP[cls.sparsifier]),
        ]
        if cls.sparsifier == "magnitude_outliers":
            declared.append(Param(
                "gamma", "model", float, 0.01, minimum=0.0, maximum=1.0,
                help="Fraction of the largest-magnitude deltas dropped as outliers."))
        if cls.sparsifier == "della_magprune":
            declared.append(Param(
                "epsilon", "model", float, 0.15,
                help="Spread of keep probabilities around density (density ± epsilon)."))
        cls.params = tuple(declared)
        cls.random = cls.uses_random_stream = cls.sparsifier in ("random", "della_magprune")

    # -- configuration ---------------------------------------------------------------
    def validate(self, p: TensorParams, where: str) -> None:
        if self.sparsifier != "della_magprune":
            return
        for i, model in enumerate(p.models):
            d, eps = model["density"], model["epsilon"]
            if 0 < d < 1 and not (d - eps > 0 and d + eps < 1):
                raise ConfigError(
                    f"{where}: model {i + 1} has density {d} and epsilon {eps}; "
                    f"density ± epsilon must lie strictly between 0 and 1, lower epsilon")

    def _sparsifies(self, p: TensorParams) -> list[bool]:
        """Per model: does sparsification change anything beyond zeroing the whole delta?"""
        if self.sparsifier is None:
            return [False] * len(p.models)
        return [0 < m["density"] < 1 for m in p.models]

    def _zeroed(self, p: TensorParams) -> list[bool]:
        """Per model: is its delta dropped entirely (density ≤ 0 or weight 0)?"""
        return [m["weight"] == 0 or (self.sparsifier is not None and m["density"] <= 0)
                for m in p.models]

    def block_local(self, p: TensorParams, ndim: int) -> bool:
        if ndim < 2 or not any(self._sparsifies(p)):
            return True
        # Random and DELLA masks are drawn per block (DELLA ranks within a row); magnitude
        # top-k, outlier removal and the L1 rescale look at the whole tensor.
        return self.sparsifier in ("random", "della_magprune") and not p.shared["rescale"]

    def selection_counts(self, p: TensorParams, numel: int) -> list[int | None] | None:
        if not self._top_k(p):
            return None
        counts = [magnitude_count(m["density"], numel) if sparsifies else numel
                  for m, sparsifies in zip(p.models, self._sparsifies(p))]
        return [k if k < numel else None for k in counts]

    def streamed_rescale(self, p: TensorParams, work: torch.dtype) -> list[bool] | None:
        # float32 norms are exact sums (exact_sum.py), which add up over rows; others are not
        if self.sparsifier not in ROW_MASKS or not p.shared["rescale"] or work != torch.float32:
            return None
        rescaled = self._sparsifies(p)
        return rescaled if any(rescaled) else None

    def rescale_sums(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext) -> list[tuple[list[int], list[int]] | None]:
        keep = ROW_MASKS[self.sparsifier]
        sums: list = []
        for k, (x, model, rescaled) in enumerate(zip(inputs, p.models, self._sparsifies(p))):
            if not rescaled:
                sums.append(None)
                continue
            delta = torch.sub(x, base)
            sums.append(l1_sums(delta, keep(delta, model["density"], model, ctx, k)))
        return sums

    def coefficients(self, p: TensorParams) -> list[float] | None:
        if any(self._sparsifies(p)):
            return None
        weights = p.per_model("weight")
        zeroed = self._zeroed(p)
        lam = p.shared["lambda"]
        normalize = p.shared["normalize"]
        if self.consensus:
            # With one contributing model the election keeps exactly its non-zero entries.
            if sum(not z for z in zeroed) > 1:
                return None
            return [0.0 if z else lam * (1.0 if normalize else w) for w, z in zip(weights, zeroed)]
        total = sum(weights)
        divisor = total if normalize and abs(total) >= DIVISOR_EPS else 1.0
        return [0.0 if z else w * lam / divisor for w, z in zip(weights, zeroed)]

    def planning_weights(self, p: TensorParams) -> list[float]:
        coeffs = self.coefficients(p)
        if coeffs is not None:
            return [abs(c) for c in coeffs]
        return [0.0 if z else abs(m["weight"]) for m, z in zip(p.models, self._zeroed(p))]

    # -- computation -----------------------------------------------------------------
    def _top_k(self, p: TensorParams) -> bool:
        """Is this tensor's sparsification a plain top-k by magnitude (``_merge_top_k``)?"""
        return self.sparsifier == "magnitude" and not p.shared["rescale"] and any(self._sparsifies(p))

    def merge(self, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
              ctx: MergeContext) -> torch.Tensor:
        assert base is not None
        if self._top_k(p):
            return self._merge_top_k(base, inputs, p, ctx)
        sparsify = SPARSIFIERS[self.sparsifier] if self.sparsifier else None

        def whole_tensor(delta: torch.Tensor, k: int, model: dict) -> torch.Tensor:
            return sparsify(delta, model["density"], p.shared["rescale"], model, ctx, k)

        return self._combine(base, inputs, p, whole_tensor if sparsify else None)

    def _combine(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                 sparsify) -> torch.Tensor:
        """base + λ·combine_k(w_k·sparsify(x_k − base)) over whatever rows ``base`` holds.
        ``inputs`` may be in their stored dtype: the subtraction promotes them exactly."""
        normalize = p.shared["normalize"]
        combine = SignConsensus(base, normalize) if self.consensus else PlainSum(base)
        delta = torch.empty_like(base)
        for k, (x, model) in enumerate(zip(inputs, p.models)):
            if x is base:
                # An expert not read under the budget is passed as the base itself: δ = 0 stays 0
                # through every sparsifier and rescale, so skip the arithmetic (exact).
                combine.add_zero(model["weight"])
                continue
            torch.sub(x, base, out=delta)
            if sparsify is not None:
                delta = sparsify(delta, k, model)
            delta.mul_(model["weight"])
            combine.add(delta, model["weight"])
        del delta
        mixed, divisor = combine.result()
        if normalize:
            mixed.div_(divisor)
        if p.shared["lambda"] != 1:
            mixed.mul_(p.shared["lambda"])
        return mixed.add_(base)

    def _merge_top_k(self, base: torch.Tensor, inputs: list[torch.Tensor], p: TensorParams,
                     ctx: MergeContext) -> torch.Tensor:
        """TIES-style magnitude pruning without materialising whole-tensor deltas: one streaming
        pass per model finds the rule that keeps its k largest |δ| (selection.topk_rule), then
        the masked combine runs tile by tile, each tile's temporaries staying in cache. (On the
        CPU the compiled kernels do all of this fused: engine/kernels/family.py.) When
        ``ctx.selections`` holds the rules (rows of a tensor too big to hold whole), they are used."""
        flat_base = base.reshape(-1)
        flat_inputs = self._contributing(flat_base, [x.reshape(-1) for x in inputs], p)
        tile = None if base.device.type == "cpu" else flat_base.numel()  # GPUs: one launch per op
        if ctx.selections is not None:  # rows of a big tensor: the executor found its rules
            offset = ctx.flat_start(base.shape)
            rules = [None if x is None or rule is None else rule.shifted(offset)
                     for x, rule in zip(flat_inputs, ctx.selections)]
        else:
            rules = [None if x is None else _magnitude_rule(x, flat_base, m["density"], tile)
                     for x, m in zip(flat_inputs, p.models)]
        out = ctx.empty_like(flat_base)
        for start, stop in tiles(flat_base.numel(), tile):
            tile_base = flat_base[start:stop]

            def prune(delta: torch.Tensor, k: int, model: dict, start=start) -> torch.Tensor:
                rule = rules[k]
                return delta if rule is None else rule.prune(delta, start)

            tile_inputs = [tile_base if x is None else x[start:stop] for x in flat_inputs]
            out[start:stop] = self._combine(tile_base, tile_inputs, p, prune)
        return out.view(base.shape)

    def _contributing(self, base: torch.Tensor, inputs: list[torch.Tensor],
                      p: TensorParams) -> list[torch.Tensor | None]:
        """``inputs`` with None for models that add nothing: unread (passed as the base itself)
        or pruned to nothing."""
        pruned_away = [self.sparsifier is not None and m["density"] <= 0 for m in p.models]
        return [None if x.data_ptr() == base.data_ptr() or gone else x for x, gone in zip(inputs, pruned_away)]


def _magnitude_rule(x: torch.Tensor, base: torch.Tensor, density: float, tile: int | None = None) -> TopKRule | None:
    """The rule keeping the ``magnitude_count`` largest |x − base| (flat tensors, density in
    (0, 1]); None when that keeps everything."""
    n = base.numel()
    k = magnitude_count(density, n)
    if k >= n:
        return None
    return topk_rule(n, k, lambda a, b: (x[a:b] - base[a:b]).abs_(), lambda at: (x[at] - base[at]).abs_(), tile)


@register
class TaskArithmetic(TaskArithmeticFamily):
    name = "task_arithmetic"
    help = "base + λ·Σ w_k·(x_k − base): add weighted task vectors to the base."


@register
class Ties(TaskArithmeticFamily):
    name = "ties"
    sparsifier = "magnitude"
    consensus = True
    default_normalize = True
    help = ("TIES: keep each delta's largest entries, elect a sign per entry, "
            "average the agreeing deltas.")


@register
class DareTies(TaskArithmeticFamily):
    name = "dare_ties"
    sparsifier = "random"
    consensus = True
    default_rescale = True
    help = "DARE with TIES sign consensus: randomly drop delta entries, rescale, elect signs."


@register
class DareLinear(TaskArithmeticFamily):
    name = "dare_linear"
    sparsifier = "random"
    default_rescale = True
    help = "DARE: randomly drop delta entries, rescale, add the weighted deltas."


@register
class Breadcrumbs(TaskArithmeticFamily):
    name = "breadcrumbs"
    sparsifier = "magnitude_outliers"
    help = "Model Breadcrumbs: drop the smallest and the largest (outlier) delta entries, add."


@register
class BreadcrumbsTies(TaskArithmeticFamily):
    name = "breadcrumbs_ties"
    sparsifier = "magnitude_outliers"
    consensus = True
    help = "Model Breadcrumbs with TIES sign consensus."


@register
class Della(TaskArithmeticFamily):
    name = "della"
    sparsifier = "della_magprune"
    consensus = True
    default_normalize = True
    default_rescale = True
    help = "DELLA: magnitude-ranked random drop per row, rescale, TIES sign consensus."


@register
class DellaLinear(TaskArithmeticFamily):
    name = "della_linear"
    sparsifier = "della_magprune"
    default_rescale = True
    help = "DELLA without sign consensus: magnitude-ranked random drop, rescale, add."
