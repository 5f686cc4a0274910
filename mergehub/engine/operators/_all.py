"""Import every operator module so that its @register decorators run."""

from . import (  # noqa: F401
    arcee_fusion,
    generalized,
    karcher,
    linear,
    model_stock,
    nearswap,
    passthrough,
    ram,
    sce,
    slerp,
)
