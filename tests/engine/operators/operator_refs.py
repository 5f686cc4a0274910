"""Independent whole-tensor reference implementations of the merge operators (plain numpy,
float64 for reductions, stable argsorts for ranks) plus small helpers shared by the tests.

They follow the mergekit 0.1.5 semantics as written in docs/operators.md, not our code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mergehub.engine.operators import REQUIRED, MergeContext, TensorParams, get_operator
from mergehub.engine.operators.exact_sum import exact_total


# -- helpers ----------------------------------------------------------------------------
def make_params(method: str, n_models: int, shared: dict | None = None,
                models: list[dict] | dict | None = None) -> TensorParams:
    """Fill defaults and coerce like the config layer would."""
    op = get_operator(method)
    shared = dict(shared or {})
    if models is None or isinstance(models, dict):
        models = [dict(models or {}) for _ in range(n_models)]
    resolved_shared, resolved_models = {}, [{} for _ in models]
    for param in op.params:
        if param.scope == "global":
            value = shared.pop(param.name, param.default)
            assert value is not REQUIRED, f"test must give {param.name}"
            resolved_shared[param.name] = param.coerce(value, "test")
        else:
            for given, out in zip(models, resolved_models):
                value = given.get(param.name, param.default)
                assert value is not REQUIRED, f"test must give {param.name}"
                out[param.name] = param.coerce(value, "test")
    assert not shared, f"unknown shared parameters {shared}"
    return TensorParams(shared=resolved_shared, models=resolved_models)


def make_ctx(shape, seed: int = 1234, tensor: str = "w",
             rows: tuple[int, int] | None = None) -> MergeContext:
    total = shape[0] if len(shape) >= 2 else 1
    start, end = rows if rows is not None else (0, total)
    return MergeContext(tensor=tensor, seed=seed, row_start=start, row_end=end,
                        total_rows=total)


def run(method: str, base, inputs, p: TensorParams, ctx: MergeContext | None = None):
    op = get_operator(method)
    shape = inputs[0].shape
    return op.merge(base, list(inputs), p, ctx or make_ctx(shape))


def rel_err(out, ref) -> float:
    out = torch.as_tensor(out, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (out - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_rel(out, ref, tol: float = 1e-6) -> None:
    err = rel_err(out, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol:g}"


def same_sum(a: list[int], b: list[int]) -> bool:
    """Exact-sum slot lists (operators/exact_sum.py) describing the same sum: the compiled kernels
    may put a chunk's or a row's whole sum into two slots where the torch path fills one an
    exponent."""
    return exact_total(a) == exact_total(b) and bool(a[255]) == bool(b[255])


def np32(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


# -- task-arithmetic family ------------------------------------------------------------
FAMILY = {  # method: (sparsifier, consensus)
    "task_arithmetic": (None, False), "ties": ("magnitude", True),
    "dare_ties": ("random", True), "dare_linear": ("random", False),
    "breadcrumbs": ("outliers", False), "breadcrumbs_ties": ("outliers", True),
    "della": ("della", True), "della_linear": ("della", False),
}


def ref_sparsify(kind, delta: np.ndarray, m: dict, rescale: bool, u: np.ndarray | None):
    d = m["density"]
    if kind is None or d >= 1:
        return delta
    n = delta.size
    flat = np.abs(delta).reshape(-1)
    keep = np.zeros(n, dtype=bool)
    if kind == "magnitude":
        if d <= 0:
            return np.zeros_like(delta)
        k = max(1, int(d * n))
        keep[np.argsort(-flat, kind="stable")[:k]] = True
    elif kind == "random":
        keep = (u.reshape(-1) < np.float32(d))
    elif kind == "outliers":
        target, n_top = int(d * n), int(m["gamma"] * n)
        n_bot = max(0, n - target - n_top)
        keep[np.argsort(flat, kind="stable")[n_bot:n_bot + target]] = True
    elif kind == "della":
        if d <= 0:
            return np.zeros_like(delta)
        rows = np.abs(delta).reshape(1, -1) if delta.ndim < 2 else np.abs(delta)
        width = rows.shape[1]
        if width == 1:
            rank = np.full(rows.shape, 0.5)
        else:
            rank = np.argsort(np.argsort(rows, axis=1, kind="stable"), axis=1, kind="stable")
            rank = rank / (width - 1)
        eps = m["epsilon"]
        probs = (d - eps) + 2 * eps * rank
        keep = (u.reshape(rows.shape) < probs.astype(np.float32)).reshape(-1)
    masked = np.where(keep.reshape(delta.shape), delta, 0).astype(np.float64)
    if rescale:
        before, after = np.abs(delta).sum(dtype=np.float64), np.abs(masked).sum()
        if before >= 1e-7 and after >= 1e-7:
            masked = masked * (before / after)
    return masked


def ref_family(method, base, xs, p: TensorParams, uniforms=None):
    kind, consensus = FAMILY[method]
    b = np32(base).astype(np.float64)
    deltas, weights = [], []
    for k, (x, m) in enumerate(zip(xs, p.models)):
        delta = (np32(x) - np32(base)).astype(np.float64)  # δ as the working dtype gives it
        u = None if uniforms is None else np32(uniforms[k])
        deltas.append(ref_sparsify(kind, delta, m, p.shared["rescale"], u) * m["weight"])
        weights.append(m["weight"])
    d = np.stack(deltas)
    w = np.array(weights).reshape((-1,) + (1,) * (d.ndim - 1))
    if consensus:
        elected = np.where(d.sum(axis=0) >= 0, 1.0, -1.0)
        mask = np.sign(d) == elected
        mixed = (d * mask).sum(axis=0)
        divisor = (w * mask).sum(axis=0)
        divisor = np.where(divisor == 0, 1.0, divisor)
    else:
        mixed = d.sum(axis=0)
        divisor = float(w.sum())
        divisor = 1.0 if abs(divisor) < 1e-8 else divisor
    if p.shared["normalize"]:
        mixed = mixed / divisor
    return b + mixed * p.shared["lambda"]


# -- the others ---------------------------------------------------------------------------
def ref_linear(xs, p):
    w = [m["weight"] for m in p.models]
    out = sum(wi * np32(x).astype(np.float64) for wi, x in zip(w, xs))
    return out / sum(w) if p.shared["normalize"] else out


def _slerp_vec(t, a, b, lerp_if):
    """slerp of two float64 vectors with the angle from their normalised dot product."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    na, nb = (na if na > 1e-8 else 1.0), (nb if nb > 1e-8 else 1.0)
    cos = float(np.clip(np.dot(a / na, b / nb), -1, 1))
    if lerp_if(cos):
        return (1 - t) * a + t * b
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def ref_slerp(base, x, t):
    a, b = np32(base).astype(np.float64), np32(x).astype(np.float64)
    out = _slerp_vec(t, a.reshape(-1), b.reshape(-1), lambda c: abs(c) > 0.9995)
    return out.reshape(a.shape)


def ref_nuslerp(base, xs, p):
    w0, w1 = (m["weight"] for m in p.models)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    v0, v1 = (np32(x).astype(np.float64) for x in xs)
    b = None if base is None else np32(base).astype(np.float64)
    if b is not None:
        v0, v1 = v0 - b, v1 - b
    shape = v0.shape
    if p.shared["nuslerp_flatten"]:
        pairs = [(v0.reshape(-1), v1.reshape(-1))]
    else:
        if p.shared["nuslerp_row_wise"]:
            v0, v1 = np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)
        pairs = list(zip(v0.reshape(-1, v0.shape[-1]), v1.reshape(-1, v1.shape[-1])))

    def one(a, c):
        na, nc = max(np.linalg.norm(a), 1e-7), max(np.linalg.norm(c), 1e-7)
        cos = float(np.clip(np.dot(a / na, c / nc), -1, 1))
        if 1 - cos * cos <= 1e-16:
            return (1 - t) * a + t * c
        th = math.acos(cos)
        return (math.sin((1 - t) * th) * a + math.sin(t * th) * c) / math.sin(th)

    res = np.stack([one(a, c) for a, c in pairs])
    if p.shared["nuslerp_flatten"]:
        res = res.reshape(shape)
    else:
        res = res.reshape(v0.shape)
        if p.shared["nuslerp_row_wise"]:
            res = np.swapaxes(res, 0, -1)
    return res if b is None else res + b


def ref_multislerp(base, xs, p):
    if len(xs) == 1:
        return np32(xs[0]).astype(np.float64)
    eps = p.shared["eps"]
    b = None if base is None else np32(base).astype(np.float64)
    vs = [np32(x).astype(np.float64).reshape(-1) - (0 if b is None else b.reshape(-1)) for x in xs]
    w = np.array([m["weight"] for m in p.models], dtype=np.float64)
    if p.shared["normalize_weights"]:
        w = w / w.sum()
    norms = np.array([np.linalg.norm(v) for v in vs])
    units = [v / (n + eps) for v, n in zip(vs, norms)]
    mean = sum(wk * u for wk, u in zip(w, units))
    mean = mean / np.linalg.norm(mean)
    tangent = sum(wk * (u - np.dot(u, mean) * mean) for wk, u in zip(w, units))
    tn = np.linalg.norm(tangent) + eps
    out = (mean * math.cos(tn) + tangent * math.sin(tn) / tn) * float((norms * w).sum())
    out = out.reshape(xs[0].shape)
    return out if b is None else out + b


def ref_karcher(xs, max_iter=10, tol=1e-5):
    if len(xs) == 1:
        return np32(xs[0]).astype(np.float64)
    vs = [np32(x).astype(np.float64).reshape(-1) for x in xs]
    norms = [np.linalg.norm(v) for v in vs]
    valid = [(v / n) for v, n in zip(vs, norms) if n > tol]
    if not valid:
        return np.zeros(xs[0].shape)
    a = 1.0 / len(valid)
    mean = sum(a * u for u in valid)
    mean = valid[0].copy() if np.linalg.norm(mean) < tol else mean / np.linalg.norm(mean)
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for u in valid:
            c = float(np.clip(np.dot(mean, u), -1, 1))
            th = math.acos(c)
            if th < tol:
                continue
            tangent += a * th / math.sin(th) * (u - c * mean)
        tn = np.linalg.norm(tangent)
        if tn < tol:
            break
        mean = math.cos(tn) * mean + math.sin(tn) * tangent / tn
        if np.linalg.norm(mean) > tol:
            mean = mean / np.linalg.norm(mean)
    return (mean * (sum(norms) / len(norms))).reshape(xs[0].shape)


def ref_model_stock(base, xs, filter_wise=False):
    b = np32(base).astype(np.float64)
    ws = [np32(x).astype(np.float64) for x in xs]
    shape = b.shape
    if filter_wise:
        b2 = b.reshape(1, -1) if b.ndim < 2 else b
        ws2 = [w.reshape(b2.shape) for w in ws]
    else:
        b2, ws2 = b.reshape(-1), [w.reshape(-1) for w in ws]
    offs = [w - b2 for w in ws2]
    coss = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            num = (offs[i] * offs[j]).sum(axis=-1)
            norms = np.linalg.norm(offs[i], axis=-1) * np.linalg.norm(offs[j], axis=-1)
            den = np.maximum(norms, 1e-6)
            coss.append(np.clip(num / den, -1, 1))
    cos = np.expand_dims(np.mean(coss, axis=0), -1)
    n = len(ws)
    den = 1 + (n - 1) * cos
    t = np.where(np.abs(den) < 1e-6, 0.0, n * cos / np.where(np.abs(den) < 1e-6, 1, den))
    return (t * (sum(ws2) / n) + (1 - t) * b2).reshape(shape)


def ref_sce(base, xs, select_topk=1.0):
    b = np32(base).astype(np.float64)
    d = np.stack([np32(x) - np32(base) for x in xs]).astype(np.float64)
    if select_topk < 1:
        if select_topk <= 0:
            d = d * 0
        else:
            var = d.var(axis=0).reshape(-1)
            k = int(np.count_nonzero(var) * select_topk)
            keep = np.zeros(var.size, dtype=bool)
            keep[np.argsort(-var, kind="stable")[:k]] = True
            d = d * keep.reshape(b.shape)
    elected = np.where(d.sum(axis=0) >= 0, 1.0, -1.0)
    mask = np.sign(d) == elected
    energy = (d ** 2).reshape(len(xs), -1).mean(axis=1)
    w = np.full(len(xs), 1 / len(xs)) if abs(energy.sum()) < 1e-6 else energy / energy.sum()
    w = w.reshape((-1,) + (1,) * b.ndim)
    merged = (d * w * mask).sum(axis=0)
    return b + merged / np.maximum((w * mask).sum(axis=0), 1e-6)


def ref_ram(base, xs, eps=1e-5, plus=None):
    b = np32(base).astype(np.float64)
    d32 = np.stack([np32(x) - np32(base) for x in xs])
    active = np.abs(d32) > np.float32(eps)
    d = np.where(active, d32, 0).astype(np.float64)
    count = active.sum(axis=0)
    out = b.copy()
    for k in range(len(xs)):
        unique = active[k] & (count == 1)
        shared = active[k] & (count > 1)
        lam = 1.0
        if plus is not None:
            r, alpha = plus
            rho = shared.sum() / max(unique.sum(), eps)
            lam = 1 + r * min(max(rho, 0), alpha)
        out += np.where(unique, d[k] * lam, np.where(shared, d[k] / np.maximum(count, 1), 0))
    return out


def ref_nearswap(base, x, t):
    a, b = np32(base).astype(np.float64), np32(x).astype(np.float64)
    w = np.clip(t / np.maximum(np.abs(a - b), 1e-6), 0, 1)
    return w * b + (1 - w) * a


def ref_arcee_fusion(base, x):
    b, v = np32(base).astype(np.float64), np32(x).astype(np.float64)
    shape = b.shape
    if b.ndim == 0:
        b, v = b.reshape(1), v.reshape(1)

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(v) + 1e-8, softmax(b) + 1e-8
    kl = (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    imp = np.abs(v - b) * kl
    s = np.sort(imp.reshape(-1))
    m = s.size
    q1, med, q3 = (s[int(np.float32(q) * np.float32(m - 1))] for q in (0.25, 0.5, 0.75))
    keep = imp >= med + 1.5 * (q3 - q1)
    return (b + keep * (v - b)).reshape(shape)
