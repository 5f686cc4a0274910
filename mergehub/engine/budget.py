"""An expert-read budget: a fraction of the experts' bytes or a size, as people write it.

Torch-free, so that a page can check a budget someone typed without importing the engine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import BudgetError, ConfigError
from .units import parse_size

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


def base_only_warning(budget: str, planned_expert_bytes: int, nonzero_expert_bytes: int) -> str | None:
    """The warning for a plan that reads nothing from the experts although they differ from the
    base: no exact block and no sketch fit the budget. Every expert then reads as the base
    (δ = 0 everywhere), and every operator that merges against a base returns the base. A plan
    with sketches and no block is not such a plan (its unread blocks hold base + sketch)."""
    if planned_expert_bytes or not nonzero_expert_bytes:
        return None
    return (f"budget {budget} plans no expert block and no sketch: every expert reads as the base, "
            "so the output equals the base; raise the budget to merge anything")
