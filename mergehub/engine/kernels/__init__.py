"""Compiled fast paths, kept apart from the operators' math.

An operator states its math once, in torch (mergehub/engine/operators). A kernel is a
compiled fast path for one step of one operator on tensors of one stored dtype, registered
here under (operator, step, dtype) and chosen by the executor through ``find``, the one
place that decides whether a kernel may take a call. Every kernel gives the bits of its
operator's torch statement (tests/engine/kernels) and stays only where the benchmark shows it
buys at least 20% end to end (docs/benchmarks.md).

Steps: ``"merge"`` is the whole merge of a unit (a tensor, or rows of it for a block-local
operator) on the CPU, straight from the checkpoints' stored dtypes to the output's:
``run(base, inputs, p, ctx, out_dtype)`` with ``base`` and ``inputs`` as the executor loaded
them (an input that ``is base`` was not read), which must equal ``operator.merge`` on the
inputs widened to float32, rounded to ``out_dtype``. ``"rescale_sums"`` is the counting pass of
a streamed tensor's rescale (engine/streamed.py): the same ``run`` returns, per input, the
exact L1 slots ``operator.rescale_sums`` returns (slots may differ; their exact totals agree).

The selection passes over a tensor too big to hold (engine/streamed.py) call ``topk.py``'s
counting functions directly, on ``find``'s common conditions (float32 work, dtypes the kernels
read, contiguous CPU tensors): they count the same float32 patterns as the torch statement.

``MERGEHUB_NATIVE=0``, or no library (installed without a C compiler): ``find`` finds nothing
and every merge runs its torch statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..operators.base import MergeContext, TensorParams
from . import binding

# what the kernels read and write (binding.DTYPE_CODES)
KERNEL_DTYPES = (torch.float32, torch.bfloat16)

MergeRun = Callable[[torch.Tensor | None, list[torch.Tensor], TensorParams, MergeContext, torch.dtype], torch.Tensor]


def _any(p: TensorParams, shape: tuple[int, ...]) -> bool:
    return True


@dataclass(frozen=True)
class Kernel:
    operator: str
    step: str
    dtype: torch.dtype  # the stored dtype of the base (or of the first input, without a base)
    run: MergeRun
    # what the kernel covers beyond the common conditions of ``find``: (params, unit shape) -> bool
    accepts: Callable[[TensorParams, tuple[int, ...]], bool] = _any


REGISTRY: dict[tuple[str, str, torch.dtype], Kernel] = {}


def register(operator: str, step: str, run: MergeRun, accepts=None,
             dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES) -> None:
    """Register ``run`` as the kernel of ``operator``'s ``step`` for each stored dtype."""
    for dtype in dtypes:
        key = (operator, step, dtype)
        if key in REGISTRY:
            raise ValueError(f"a kernel is already registered for {key}")
        REGISTRY[key] = Kernel(operator, step, dtype, run, accepts or _any)


def enabled() -> bool:
    """Are the compiled kernels loaded (built, and not switched off with MERGEHUB_NATIVE=0)?"""
    return binding.available()


def find(operator: str, step: str, base: torch.Tensor | None, inputs: list[torch.Tensor], p: TensorParams,
         work: torch.dtype, out_dtype: torch.dtype) -> Kernel | None:
    """The kernel that takes this call, or None (the executor then runs the torch statement).

    A kernel takes a call when the library is loaded, one is registered for (operator, step,
    the stored dtype), the merge computes in float32 (the kernels' arithmetic) into a dtype
    they write, every tensor is on the CPU, contiguous, of a dtype they read and of one size,
    and the kernel's own ``accepts`` covers the parameters and shape."""
    if not enabled():
        return None
    _load_all()
    tensors = ([] if base is None else [base]) + inputs
    if not tensors:
        return None
    kernel = REGISTRY.get((operator, step, tensors[0].dtype))
    if kernel is None or work != torch.float32 or out_dtype not in KERNEL_DTYPES:
        return None
    n = tensors[0].numel()
    if not all(t.device.type == "cpu" and t.dtype in KERNEL_DTYPES and t.is_contiguous() and t.numel() == n
               for t in tensors):
        return None
    return kernel if kernel.accepts(p, tuple(tensors[0].shape)) else None


def registered() -> list[Kernel]:
    """Every registered kernel (for the tests and the docs)."""
    _load_all()
    return list(REGISTRY.values())


def _load_all() -> None:
    # importing the modules runs their register() calls
    from . import elementwise, family, sce, span  # noqa: F401
