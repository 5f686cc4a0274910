"""Parity with mergekit 0.1.5 itself: every deterministic operator configuration is merged by
our operator and by mergekit's ``merge_tensors`` (in a subprocess, one call for all cases)
and compared in float32 to ≤ 1e-6 relative (max|a − b| / max|mergekit|).

The interpreter is $MERGEKIT_PYTHON or <repo>/.venv-mergekit/bin/python; the tests skip when
it or mergekit is missing. Random methods (DARE, DELLA) are compared at the densities where
they are deterministic (0 and 1), which still covers their rescale and consensus paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from operator_refs import make_ctx, make_params, rel_err
from safetensors.torch import load_file, save_file

from mergehub.engine.operators import OPERATORS, REQUIRED, get_operator

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DRIVER = HERE / "mergekit_driver.py"


def mergekit_python() -> Path | None:
    path = Path(os.environ.get("MERGEKIT_PYTHON", REPO / ".venv-mergekit" / "bin" / "python"))
    if not path.exists():
        return None
    probe = subprocess.run([str(path), "-c", "import mergekit.merge_methods"],
                           capture_output=True, timeout=120)
    return path if probe.returncode == 0 else None


@dataclass
class Case:
    id: str
    method: str
    shape: tuple
    n: int  # non-base inputs
    shared: dict
    models: list
    with_base: bool = True  # False for base-less calls (always for ignored-base methods)
    seed: int = 0
    scale: float = 0.1


def _cases() -> list[Case]:
    cases: list[Case] = []
    shapes = [(16, 12), (10,), (3, 4, 5)]

    def add(method, n, shared=None, models=None, **kw):
        models = models if isinstance(models, list) else [dict(models or {}) for _ in range(n)]
        for shape in kw.pop("shapes", shapes):
            cid = f"{method}-{len(cases)}-{'x'.join(map(str, shape)) or 'scalar'}"
            cases.append(Case(cid, method, shape, n, dict(shared or {}), models,
                              seed=len(cases), **kw))

    w3 = [{"weight": 0.6}, {"weight": -0.3}, {"weight": 0.9}]
    add("task_arithmetic", 3, {}, w3)
    add("task_arithmetic", 3, {"normalize": True, "lambda": 0.7}, w3)
    sparse = [{"weight": 0.6, "density": 0.4}, {"weight": 0.5, "density": 0.7},
              {"weight": 0.9, "density": 0.2}]
    add("ties", 3, {}, sparse)
    add("ties", 3, {"normalize": False, "rescale": True, "lambda": 1.3}, sparse)
    add("ties", 3, {}, w3)
    for method in ("breadcrumbs", "breadcrumbs_ties"):
        add(method, 3, {}, [dict(m, gamma=0.1) for m in sparse])
        add(method, 3, {"rescale": True}, [dict(m, gamma=0.05) for m in sparse])
        add(method, 2, {}, [{"weight": 1.0, "density": 0.9, "gamma": 0.3}, {"weight": 0.4}])
    deterministic = [{"weight": 0.6, "density": 1.0}, {"weight": 0.5, "density": 0.0},
                     {"weight": 0.9, "density": 1.0}]
    for method in ("dare_ties", "dare_linear", "della", "della_linear"):
        add(method, 3, {}, deterministic)
        add(method, 3, {"normalize": True, "lambda": 1.5}, w3)
    add("linear", 3, {}, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.3}], with_base=False)
    add("linear", 2, {"normalize": False}, [{"weight": 1.5}, {"weight": -0.5}], with_base=False)
    for t in (0.0, 0.35, 1.0):
        add("slerp", 1, {"t": t}, scale=1.0)
    add("slerp", 1, {"t": 0.6}, scale=1e-3)  # nearly parallel: lerp branch
    for flatten, row_wise in [(True, False), (False, False), (False, True)]:
        for with_base in (True, False):
            add("nuslerp", 2, {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise},
                [{"weight": 0.3}, {"weight": 0.8}], with_base=with_base, scale=0.5)
    for with_base in (True, False):
        add("multislerp", 3, {}, [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}],
            with_base=with_base, scale=0.5)
        add("multislerp", 2, {"normalize_weights": False}, [{"weight": 0.7}, {"weight": 0.6}],
            with_base=with_base, scale=0.5)
    add("karcher", 3, {}, with_base=False, scale=1.0, shapes=shapes + [()])
    add("karcher", 4, {"max_iter": 3, "tol": 1e-4}, with_base=False, scale=1.0)
    add("model_stock", 3, {})
    add("model_stock", 2, {"filter_wise": True})
    add("sce", 3, {})
    add("sce", 3, {"select_topk": 0.3})
    add("sce", 2, {"select_topk": 0.6}, scale=1e-4)
    add("ram", 3, {"epsilon": 0.05})
    add("ramplus_tl", 3, {"epsilon": 0.05})
    add("ramplus_tl", 2, {"r": 0.5, "alpha": 3.0, "epsilon": 0.08})
    add("nearswap", 1, {"t": 0.05})
    add("nearswap", 1, {"t": 0.0005})
    add("arcee_fusion", 1, {}, scale=0.5, shapes=shapes + [(40, 64)])
    add("passthrough", 1, {}, with_base=False)
    add("passthrough", 1, {}, [{"scale": 0.5}], with_base=False)
    return cases


def _inputs(case: Case) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(case.seed)
    base = torch.randn(case.shape, generator=g)
    xs = []
    for k in range(case.n):
        x = base + case.scale * torch.randn(case.shape, generator=g)
        if k == 1 and len(case.shape) >= 1:  # some unchanged entries (unread under a budget)
            x = torch.where(torch.rand(case.shape, generator=g) < 0.3, base, x)
        xs.append(x)
    return base, xs


def _mergekit_request(case: Case):
    """Tensor order, base index and parameters as mergekit's merge_tensors takes them."""
    names = [f"{case.id}/x{k}" for k in range(case.n)]
    op = get_operator(case.method)
    parameters: dict = dict(case.shared)
    given = {key for m in case.models for key in m}
    resolved = make_params(case.method, case.n, dict(case.shared), [dict(m) for m in case.models])
    parameters.update({key: [m[key] for m in resolved.models] for key in given})
    if case.with_base and op.base != "ignored":
        return [f"{case.id}/base"] + names, 0, parameters
    return names, None, parameters


def _ours(case: Case, base, xs) -> torch.Tensor:
    op = get_operator(case.method)
    models = [dict(m) for m in case.models] if case.models else [{} for _ in range(case.n)]
    p = make_params(case.method, case.n, dict(case.shared), models)
    ctx = make_ctx(case.shape, tensor=case.id)
    return op.merge(base if case.with_base else None, xs, p, ctx)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    python = mergekit_python()
    if python is None:
        pytest.skip("mergekit interpreter not available (set MERGEKIT_PYTHON)")
    work = tmp_path_factory.mktemp("mergekit_parity")
    cases = _cases()
    tensors, requests = {}, []
    for case in cases:
        base, xs = _inputs(case)
        tensors[f"{case.id}/base"] = base
        tensors.update({f"{case.id}/x{k}": x for k, x in enumerate(xs)})
        names, base_index, parameters = _mergekit_request(case)
        requests.append({"id": case.id, "method": case.method, "tensors": names,
                         "base_index": base_index, "parameters": parameters})
    save_file(tensors, work / "inputs.safetensors")
    (work / "cases.json").write_text(json.dumps(requests))
    done = subprocess.run(
        [str(python), str(DRIVER), str(work / "cases.json"), str(work / "inputs.safetensors"),
         str(work / "outputs.safetensors"), str(work / "report.json")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    return cases, tensors, load_file(work / "outputs.safetensors"), report


def test_mergekit_version(parity):
    assert parity[3]["version"] == "0.1.5"


def test_every_deterministic_method_is_covered(parity):
    covered = {case.method for case in parity[0]}
    assert covered == set(OPERATORS)


def test_outputs_match_mergekit(parity):
    cases, tensors, outputs, report = parity
    failures = []
    for case in cases:
        if case.id in report["errors"]:
            failures.append(f"{case.id}: mergekit failed: {report['errors'][case.id]}")
            continue
        base = tensors[f"{case.id}/base"]
        xs = [tensors[f"{case.id}/x{k}"] for k in range(case.n)]
        ours = _ours(case, base, xs)
        err = rel_err(ours, outputs[case.id])
        if not err <= 1e-6:
            failures.append(f"{case.id}: relative error {err:.2e}")
    assert not failures, "\n".join(failures)


def test_declared_parameters_match_mergekit(parity):
    specs = parity[3]["specs"]
    assert set(specs) == set(OPERATORS)
    for name, spec in specs.items():
        op = get_operator(name)
        theirs = {k: (("global" if v["scope"] == "shared" else "model"), v["default"])
                  for k, v in spec["parameters"].items()}
        ours = {p.name: (p.scope, "REQUIRED" if p.default is REQUIRED else p.default)
                for p in op.params}
        assert ours == theirs, name
        assert op.base == spec["base"], name


if __name__ == "__main__":  # pragma: no cover - convenience for debugging one run
    sys.exit(pytest.main([__file__, "-q"]))
