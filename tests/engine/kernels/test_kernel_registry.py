"""The kernel registry: what is registered (each with its bit-exact tests beside this file),
what ``find`` declines, and the executor choosing the kernels for a whole merge with the
same output bytes as the torch statements."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import family, make_params, needs_kernels

from mergehub.engine import kernels

pytestmark = needs_kernels

# every registered kernel, by operator: each has its bit-exact tests in test_kernel_family.py or
# test_kernel_elementwise.py; a kernel registered without them fails here
TESTED = {"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
          "ram", "ramplus_tl", "nearswap", "sce", "slerp", "nuslerp", "multislerp", "karcher", "model_stock"}


def test_every_registered_kernel_is_tested_and_covers_both_dtypes():
    registered = kernels.registered()
    assert {k.operator for k in registered} == TESTED
    assert {k.step for k in registered} == {"merge", "rescale_sums"}
    # the counting pass of a streamed rescale (test_kernel_family.py): the methods drawing masks by row
    assert {k.operator for k in registered if k.step == "rescale_sums"} == {"dare_ties", "dare_linear", "della",
                                                                            "della_linear"}
    for operator in TESTED:
        assert {k.dtype for k in registered if k.operator == operator} == {torch.float32, torch.bfloat16}


def test_find_declines_what_the_kernels_do_not_cover():
    base, xs = family(100, 2, seed=1, quantised=False)
    p = make_params("ties", 2, {}, {"weight": 1.0, "density": 0.5})

    def found(base, xs, work=torch.float32, out=torch.float32, method="ties", p=p):
        return kernels.find(method, "merge", base, xs, p, work, out) is not None

    assert found(base, xs) and found(base.bfloat16(), xs) and found(base, [x.bfloat16() for x in xs])
    assert not found(base, xs, work=torch.float64)  # the kernels compute in float32
    assert not found(base, xs, out=torch.float16)  # and write float32 or bfloat16
    assert not found(base.half(), [x.half() for x in xs])
    assert not found(base, [xs[0], xs[1][:50]])  # sizes differ
    assert not found(base.view(10, 10).t(), [x.view(10, 10).t() for x in xs])  # not contiguous
    # no kernel: task arithmetic's torch statement is as fast end to end (docs/benchmarks.md)
    plain = make_params("task_arithmetic", 2, {}, {"weight": 1.0})
    assert not found(base, xs, method="task_arithmetic", p=plain)


def test_a_kernel_is_registered_once():
    kernels.registered()  # loads the registrations
    with pytest.raises(ValueError, match="already registered"):
        kernels.register("ties", "merge", lambda *a: None, dtypes=(torch.float32,))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs", "della", "ram"])
@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_a_bf16_merge_writes_the_same_bytes_with_and_without_kernels(tmp_path, method, budget):
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from conftest import load_model, make_family

    from mergehub.engine import api
    from mergehub.engine.config import parse_config

    fam = make_family(tmp_path / "f", experts=3, dtype=torch.bfloat16, change="dense")
    if method == "ram":
        mapping = fam.config(method)
        for model in mapping["models"]:
            del model["parameters"]
    else:
        mapping = fam.config(method, weights=[1.0, 0.5, -0.3], parameters={"density": 0.4})
    mapping.update(dtype="float32", out_dtype="bfloat16")

    def merge(out):
        # exact blocks only: sketched units merge a float32 approximation, not the stored bf16 rows
        api.run_merge(parse_config(mapping), out, catalog_dir=tmp_path / "catalog", budget=budget,
                      block_size=64, device="cpu", sketch_rank=0)
        return load_model(out)

    chosen = []
    real_find = kernels.find
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "find", lambda *args: chosen.append(real_find(*args)) or chosen[-1])
        fast = merge(tmp_path / "kernels")
    ran = [k for k in chosen if k is not None]
    assert ran and {k.dtype for k in ran} == {torch.bfloat16}  # the kernels ran, on the stored bf16 base
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "find", lambda *args: None)
        slow = merge(tmp_path / "torch")
    assert fast.keys() == slow.keys()
    for name in fast:
        assert fast[name].dtype == torch.bfloat16 and torch.equal(fast[name], slow[name]), name
