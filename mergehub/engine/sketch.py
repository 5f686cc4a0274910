"""Low-rank sketches of expert deltas, computed while indexing (see docs/engine.md, "Sketches").

A matrix tensor (rows × columns; a 3-D+ tensor read as rows × the rest, since blocks are row
ranges) has delta D = θ_expert − θ_base. Its rank-R sketch is a pair of factors A (rows × R)
and B (columns × R) with D ≈ A·Bᵀ: A = U_R·Σ_R and B = V_R of a truncated SVD — exact for
small matrices, randomized with power iterations for large ones (Halko, Martinsson & Tropp,
"Finding structure with randomness", 2011, algorithms 4.3/5.1). The first r columns of both
are the best rank-r sketch for every r ≤ R, so one stored sketch serves a ladder of ranks
1, 2, 4, … R: a plan picks, per tensor, how many columns to read. The factors are stored
transposed (Aᵀ: R × rows, Bᵀ: R × columns) so that a rank-r prefix is r contiguous rows of each,
in bf16 whatever the tensor's dtype: half of float32's bytes buys twice the rank, and the rounding
(~0.4% of an entry) is far below what the rank leaves out. The residual D − A_r·B_rᵀ of the *stored* factors
is measured per block for every rung r of the ladder: it is exactly what a merge that uses the
rank-r sketch in place of block b leaves out, so the planner's certificate is built from it.

Only rungs worth it are kept: floating tensors of two or more dimensions, at most
``MAX_SKETCH_ELEMENTS`` entries (the indexer holds such a tensor's delta in float32 while it
sketches it), and ranks whose sketch is under half the tensor's bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .dtypes import torch_dtype
from .errors import ConfigError
from .layout import TensorInfo, read_file_header

DEFAULT_SKETCH_RANK = 32  # chosen from bench/sketches.py on the trained family (docs/engine.md)
MAX_SKETCH_RANK = 256
MAX_SKETCH_ELEMENTS = 32 << 20  # 128 MiB of float32 delta per expert while indexing
EXACT_SVD_MAX_DIM = 256  # min(rows, columns) up to this: a full SVD is cheap enough
OVERSAMPLE = 8  # extra random directions of the randomized range finder
POWER_ITERATIONS = 2
SKETCH_SEED = 0x5EED  # the range finder's Gaussian test matrix: same inputs, same sketch


def check_rank(value, where: str = "sketch rank") -> int:
    """A sketch rank from a config or a command line: a whole number in [0, MAX_SKETCH_RANK]."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SKETCH_RANK:
        raise ConfigError(f"{where} must be a whole number from 0 (off) to {MAX_SKETCH_RANK}, got {value!r}")
    return value


def matrix_shape(info: TensorInfo) -> tuple[int, int]:
    return info.rows, info.numel // max(1, info.rows)


def factor_dtype(info: TensorInfo) -> torch.dtype:
    """The stored factors' dtype: bf16 for every tensor. On the trained float32 family, bf16
    factors (twice the rank per byte) kept 81–86% of the gain at budget 0.1 where float32
    factors kept 55–58% (docs/engine.md, "Sketches"); their rounding is in the residual."""
    return torch.bfloat16


def sketch_bytes(info: TensorInfo, rank: int) -> int:
    """Bytes of a rank-``rank`` sketch of this tensor: what using it costs against a budget."""
    rows, cols = matrix_shape(info)
    return rank * (rows + cols) * factor_dtype(info).itemsize


def worth_sketching(info: TensorInfo, rank: int) -> bool:
    if rank <= 0 or len(info.shape) < 2 or not torch_dtype(info.dtype).is_floating_point:
        return False
    if info.numel > MAX_SKETCH_ELEMENTS:
        return False
    return sketch_bytes(info, rank) * 2 < info.nbytes


def ladder(max_rank: int) -> list[int]:
    """The ranks a plan may choose from a rank-``max_rank`` sketch: powers of two, and max_rank."""
    rungs, r = [], 1
    while r < max_rank:
        rungs.append(r)
        r *= 2
    return rungs + [max_rank] if max_rank > 0 else []


def tensor_rungs(info: TensorInfo, max_rank: int) -> list[int]:
    """The rungs of ``ladder(max_rank)`` worth storing for this tensor (empty: no sketch)."""
    return [r for r in ladder(max_rank) if worth_sketching(info, r)]


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in float32 with A·Bᵀ the best rank-``rank`` approximation of ``delta`` (rows × cols):
    exactly for small matrices, up to the randomized range finder's error otherwise."""
    rows, cols = delta.shape
    rank = min(rank, rows, cols)
    if min(rows, cols) <= EXACT_SVD_MAX_DIM:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        return u[:, :rank] * s[:rank], vh[:rank].T.contiguous()
    # Randomized: an orthonormal basis Q of D's dominant column space (D·Ω, sharpened by power
    # iterations with re-orthonormalisation), then the small SVD of Qᵀ·D.
    generator = torch.Generator().manual_seed(SKETCH_SEED)
    omega = torch.randn(cols, min(cols, rank + OVERSAMPLE), generator=generator)
    q = torch.linalg.qr(delta @ omega).Q
    for _ in range(POWER_ITERATIONS):
        q = torch.linalg.qr(delta.T @ q).Q
        q = torch.linalg.qr(delta @ q).Q
    u_small, s, vh = torch.linalg.svd(q.T @ delta, full_matrices=False)
    return (q @ u_small[:, :rank]) * s[:rank], vh[:rank].T.contiguous()


def sketch_delta(delta: torch.Tensor, rungs: list[int], rows_per_block: int, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """Transposed factors (Aᵀ, Bᵀ) of ``delta`` (float32, rows × cols) up to the top rung,
    stored in ``dtype``, and for each rung the per-block (``rows_per_block`` rows) norm of
    what that rung's prefix of the stored factors misses."""
    a, b = low_rank(delta, rungs[-1])
    at, bt = a.T.to(dtype).contiguous(), b.T.to(dtype).contiguous()
    return at, bt, residual_norms(delta, at, bt, rungs, rows_per_block)


# A block whose residual² is below this share of its ‖D_b‖² is measured directly: the expansion
# below subtracts nearly equal numbers there, and its rounding (~1e-13 of ‖D_b‖² in float64)
# must stay far under the bound it feeds.
CANCELLATION_SHARE = 1e-6


def residual_norms(delta: torch.Tensor, at: torch.Tensor, bt: torch.Tensor, rungs: list[int],
                   rows_per_block: int) -> list[list[float]]:
    """Per rung r and block b, ‖D_b − A_{b,r}·B_rᵀ‖₂ for the stored factors, without forming
    any residual matrix: with P = D·B and G = BᵀB (float64),

        ‖D_b − A_{b,r}·B_rᵀ‖² = ‖D_b‖² − 2·Σ_{i∈b, j<r} A_ij·P_ij + Σ_{i∈b} a_{i,<r}·G_{<r,<r}·a_{i,<r}ᵀ

    one product of D with the R columns of B instead of one full pass over D per rung."""
    d = delta.double()
    a, b = at.double().T, bt.double().T  # rows × R, cols × R
    blocks = lambda per_row: per_row.split(rows_per_block)  # noqa: E731
    energy = torch.stack([part.sum() for part in blocks((d * d).sum(dim=1))])
    cross = ((d @ b) * a).cumsum(dim=1)  # rows × R: Σ_{j≤c} A_ij·P_ij
    gram = b.T @ b
    per_rung = []
    for r in rungs:
        quadratic = ((a[:, :r] @ gram[:r, :r]) * a[:, :r]).sum(dim=1)
        squares = torch.stack([part.sum() for part in blocks(quadratic - 2 * cross[:, r - 1])]) + energy
        close = (squares < CANCELLATION_SHARE * energy).nonzero().flatten().tolist()
        if close:  # nearly all of these blocks is in the sketch: measure their residual directly
            approx = a[:, :r] @ b[:, :r].T
            for k in close:
                rows = slice(k * rows_per_block, (k + 1) * rows_per_block)
                squares[k] = ((d[rows] - approx[rows]) ** 2).sum()
        per_rung.append([math.sqrt(max(0.0, float(x))) for x in squares])
    return per_rung


def approximate_rows(at: torch.Tensor, bt: torch.Tensor, row_start: int, row_end: int,
                     shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows [row_start, row_end) of the sketched delta A·Bᵀ computed in ``dtype``, shaped
    ``shape``, from a prefix of the transposed factors (r × rows, r × columns)."""
    return (at[:, row_start:row_end].to(dtype).T @ bt.to(dtype)).view(shape)


# ----- the sidecar file: one safetensors file of factors per catalog entry -----------------------

A_PREFIX, B_PREFIX = "sketch.a::", "sketch.b::"  # a sidecar's tensor names: prefix + the model's tensor


def factor_names(tensor: str) -> tuple[str, str]:
    return A_PREFIX + tensor, B_PREFIX + tensor


def write_factors(path: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write ``{tensor: (Aᵀ, Bᵀ)}`` to ``path`` atomically."""
    tensors = {}
    for name, (a, b) in factors.items():
        a_name, b_name = factor_names(name)
        tensors[a_name], tensors[b_name] = a, b
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def factor_layout(path: Path) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """Where each tensor's (Aᵀ, Bᵀ) lie in a sidecar file (headers only)."""
    _, infos = read_file_header(Path(path))
    by_name = {info.name: info for info in infos}
    out = {}
    for name in by_name:
        if name.startswith(A_PREFIX):
            tensor = name[len(A_PREFIX):]
            out[tensor] = (by_name[name], by_name[B_PREFIX + tensor])
    return out
