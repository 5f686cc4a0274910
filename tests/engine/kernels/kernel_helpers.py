"""Shared helpers of the kernel tests: a family of random tensors, a merge through the
registered kernel (asserting the registry chose it) and the same merge as the operator's torch
statement."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "operators"))
from operator_refs import make_ctx, make_params, same_sum  # noqa: E402,F401

from mergehub.engine import kernels  # noqa: E402
from mergehub.engine.operators.registry import get_operator  # noqa: E402

if os.environ.get("MERGEHUB_NATIVE") == "0":
    pytest.skip("MERGEHUB_NATIVE=0: the compiled kernels are switched off", allow_module_level=True)

# where there is a C compiler, `pip install -e .` builds the kernels; a missing library there
# means the build failed, which test_kernel_binding.py reports; the other kernel tests skip
needs_kernels = pytest.mark.skipif(not kernels.enabled(), reason="the compiled kernels are not built")
HAVE_COMPILER = shutil.which("cc") is not None


def family(n: int, experts: int, seed: int, quantised: bool, scale: float = 0.01):
    """A float32 base and experts base + scale·N(0, 1); ``quantised``: both as bfloat16, so
    |δ| takes few distinct values and top-k cuts fall in runs of ties."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    xs = [base + scale * torch.randn(n, generator=g) for _ in range(experts)]
    if quantised:
        return base.bfloat16(), [x.bfloat16() for x in xs]
    return base, xs


def through_kernel(method: str, base, xs, p, ctx, out_dtype=torch.float32) -> torch.Tensor:
    """The merge through the kernel the registry finds for it (which must find one)."""
    kernel = kernels.find(method, "merge", base, list(xs), p, torch.float32, out_dtype)
    assert kernel is not None, f"no kernel takes this {method} merge"
    return kernel.run(base, list(xs), p, ctx, out_dtype)


def torch_statement(method: str, base, xs, p, ctx, out_dtype=torch.float32) -> torch.Tensor:
    """The operator's torch statement on the inputs widened to float32, rounded to ``out_dtype``."""
    work_base = base.float()  # an unread expert is the base itself, as the executor passes it
    inputs = [work_base if x is base else x.float() for x in xs]
    return get_operator(method).merge(work_base, inputs, p, ctx).to(out_dtype)


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal dtype, shape and bits; a NaN matches any NaN (payloads may differ)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = b.isnan()
    assert torch.equal(a.isnan(), nan)
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a.dtype]
    assert torch.equal(a[~nan].view(ints), b[~nan].view(ints))
