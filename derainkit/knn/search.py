"""Exact patch kNN: global and windowed (MSGNN's search window), pure PyTorch, CPU and CUDA.

How a search runs (both modes):
1. Shortlist: squared distances in GEMM form g = ‖x‖² − 2 q·xᵀ (‖q‖² is row-constant, so it is left out of
   the ranking), computed block by block so no block exceeds the memory budget, then the k+1 smallest per
   query with `topk`.
   On CPU, long rows use a two-stage selection (group minima first), and the GEMM goes through oneDNN
   when it is available and checked to be fp32-exact (about 2× MKL's speed on the AVX-512 EPYC this was
   tuned on); elsewhere torch.addmm / baddbmm.
2. Exact re-rank: the distances of the k winners are recomputed directly as Σ(q − x)² in the compute dtype
   (far more accurate than the GEMM form when distances are small next to the norms) and sorted by
   (distance, candidate index), which gives deterministic tie-breaking by index. So the results do not
   depend on which GEMM, blocking or memory budget produced the shortlist.
3. Completeness check: the GEMM form has a rounding error bounded by `tol` (a worst-case bound from the
   vector length and norms). If the (k+1)-th GEMM value is not clearly above the k-th exact distance, a
   candidate outside the winners could still belong to the answer (near-ties, duplicate candidates); those
   few queries are redone exactly over every candidate whose GEMM value could qualify.

Windowed search (MSGNN `index_neighbours` semantics) uses the blocked local GEMM: a rectangle of queries
shares one union rectangle of candidate windows, a single dense GEMM covers it, and candidates outside each
query's own window are set to +inf before the selection. All blocks have the same shape, so several go
through one step of batched ops. The m×o index tensor of the official code is never built.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from derainkit.errors import DerainkitError

__all__ = ["Window", "knn", "knn_reference_fp64", "window_origins", "window_index", "window_side",
           "default_memory_budget"]

_RULES = ("msgnn", "centered")
_BACKENDS = ("auto", "torch", "faiss", "triton")


class KnnError(DerainkitError):
    """Bad input to the patch kNN (shapes, grids, window, k, backend)."""


@dataclass(frozen=True)
class Window:
    """Search window of MSGNN's graph construction.

    size: window side in patches; the effective side is S = min(size, n1, n2) of the candidate grid.
    rule: "msgnn" reproduces the official `index_neighbours`: origin row = clamp(i//2 − S//scale, 0, n1−S)
          (the hard-coded 1/2 from IGNN), same for columns. "centered" centres the window on the query's
          position mapped to the candidate grid: clamp(round(i·n1/m1) − S//2, 0, n1−S), round half to even
          (Python's `round`).
    scale: the candidate set's scale (1, 2, 4; exemplar 1), used by the "msgnn" rule only.
    """

    size: int = 30
    rule: str = "msgnn"
    scale: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise KnnError(f"Window.size must be a positive int, got {self.size!r}")
        if self.rule not in _RULES:
            raise KnnError(f"Window.rule must be one of {_RULES}, got {self.rule!r}")
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise KnnError(f"Window.scale must be a positive int, got {self.scale!r}")


# ----------------------------------------------------------------------------------------------------------
# window geometry

def window_side(window: Window, cand_grid: tuple[int, int]) -> int:
    """Effective window side S = min(size, n1, n2)."""
    return min(window.size, cand_grid[0], cand_grid[1])


def _origins_1d(mq: int, nc: int, S: int, window: Window, device: torch.device) -> Tensor:
    i = torch.arange(mq, device=device, dtype=torch.int64)
    if window.rule == "msgnn":
        start = i // 2 - S // window.scale
    else:  # centered: round(i*nc/mq) half-to-even, in exact integer arithmetic
        num = i * nc
        q, r = num // mq, num % mq
        up = (2 * r > mq) | ((2 * r == mq) & (q % 2 == 1))
        start = q + up.to(torch.int64) - S // 2
    return start.clamp(0, nc - S)


def window_origins(query_grid: tuple[int, int], cand_grid: tuple[int, int], window: Window,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per-query-row and per-query-column window origins (int64 tensors of length m1 and m2).

    Query (i, j) searches candidate rows [rows[i], rows[i]+S) × cols [cols[j], cols[j]+S).
    Both are non-decreasing in i (j), which is what the blocked search relies on.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    S = window_side(window, cand_grid)
    return (_origins_1d(query_grid[0], cand_grid[0], S, window, device),
            _origins_1d(query_grid[1], cand_grid[1], S, window, device))


def window_index(query_grid: tuple[int, int], cand_grid: tuple[int, int], window: Window,
                 device: torch.device | str | None = None) -> Tensor:
    """The official m×o window index tensor I (int64), candidates of each row in ascending index order.

    Memory-heavy (8·m·o bytes): meant for tests and the gather baseline, not used by `knn`. The official
    code lists the same set in a different order (column offset outer); the set is what matters.
    """
    rows, cols = window_origins(query_grid, cand_grid, window, device)
    S = window_side(window, cand_grid)
    n2 = cand_grid[1]
    off = torch.arange(S, device=rows.device, dtype=torch.int64)
    r = (rows[:, None] + off[None, :]) * n2  # m1 × S
    c = cols[:, None] + off[None, :]  # m2 × S
    idx = r[:, None, :, None] + c[None, :, None, :]  # m1 × m2 × S × S
    return idx.reshape(query_grid[0] * query_grid[1], S * S)


# ----------------------------------------------------------------------------------------------------------
# memory budget

def default_memory_budget(device: torch.device | str) -> int:
    """Bytes a search may use for its distance blocks, from the memory free on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # a quarter of what is free, capped: bigger blocks stop paying off long before this
        return int(max(64 << 20, min(free // 4, 2 << 30)))
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = 4 << 30
    # CPU: blocks of a few tens of MB already run the GEMM at full speed; cap low to keep peak RSS small
    return int(max(16 << 20, min(avail // 8, 256 << 20)))


# ----------------------------------------------------------------------------------------------------------
# validation

def _as_float(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype).contiguous() if x.dtype != dtype else x.contiguous()


def _check_grid(grid: tuple[int, int] | None, count: int, name: str) -> tuple[int, int] | None:
    if grid is None:
        return None
    try:
        g = (int(grid[0]), int(grid[1]))
    except (TypeError, IndexError, ValueError):
        raise KnnError(f"{name} must be a pair (rows, cols), got {grid!r}") from None
    if len(grid) != 2 or g[0] < 1 or g[1] < 1:
        raise KnnError(f"{name} must be a pair of positive ints, got {grid!r}")
    if g[0] * g[1] != count:
        raise KnnError(f"{name}={g} has {g[0] * g[1]} cells but the tensor has {count} patches")
    return g


def _validate(query: Tensor, cand: Tensor, k: int, query_grid: tuple[int, int] | None,
              cand_grid: tuple[int, int] | None, window: Window | None
              ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    for name, t in (("query", query), ("cand", cand)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise KnnError(f"{name} must be a b×n×e tensor, got shape {shape}")
        if not t.is_floating_point():
            raise KnnError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if query.shape[0] != cand.shape[0]:
        raise KnnError(f"batch sizes differ: query {tuple(query.shape)} vs cand {tuple(cand.shape)}")
    if query.shape[2] != cand.shape[2]:
        raise KnnError(f"patch lengths differ: query e={query.shape[2]} vs cand e={cand.shape[2]}")
    if query.device != cand.device:
        raise KnnError(f"query is on {query.device} but cand is on {cand.device}")
    if query.shape[1] == 0 or cand.shape[1] == 0 or query.shape[2] == 0:
        raise KnnError(f"empty input: query {tuple(query.shape)}, cand {tuple(cand.shape)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise KnnError(f"k must be a positive int, got {k!r}")
    qg = _check_grid(query_grid, query.shape[1], "query_grid")
    cg = _check_grid(cand_grid, cand.shape[1], "cand_grid")
    if window is not None:
        if not isinstance(window, Window):
            raise KnnError(f"window must be a derainkit.knn.Window or None, got {type(window).__name__}")
        if qg is None or cg is None:
            raise KnnError("a windowed search needs query_grid and cand_grid")
        S = window_side(window, cg)
        if k > S * S:
            raise KnnError(f"k={k} exceeds the {S}×{S}={S * S} candidates of the search window")
    elif k > cand.shape[1]:
        raise KnnError(f"k={k} exceeds the number of candidates n={cand.shape[1]}")
    return qg, cg


def _check_norms(qn: Tensor, xn: Tensor) -> None:
    """Squared norms must be finite: catches NaN/inf inputs (and overflow) with two small reductions."""
    for name, t in (("query", qn), ("cand", xn)):
        if not bool(torch.isfinite(t).all()):
            raise KnnError(f"{name} contains NaN or inf values (or values whose squares overflow)")


def _compute_dtype(query: Tensor, cand: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (query.dtype, cand.dtype) else torch.float32


def _roundoff(dtype: torch.dtype) -> float:
    return 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24


def _gemm_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of the shortlist GEMM under the current matmul precision settings."""
    if dtype == torch.float64:
        return 2.0 ** -53
    prec = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        reduced = "medium" if prec == "medium" else (
            "high" if prec == "high" or torch.backends.cuda.matmul.allow_tf32 else "highest")
    else:
        mk = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
        reduced = "medium" if prec == "medium" or mk == "bf16" else (
            "high" if prec == "high" or mk == "tf32" else "highest")
    if reduced == "highest":
        return 2.0 ** -24
    warnings.warn("reduced-precision float32 matmul is enabled (TF32/bf16): derainkit.knn stays exact but "
                  "has to re-rank far more candidates, so it is slower", RuntimeWarning, stacklevel=3)
    return 2.0 ** -8 if reduced == "medium" else 2.0 ** -11


def _tol_coeffs(e: int, u_gemm: float, u: float) -> tuple[float, float]:
    """(a, c) such that |g − (δ − ‖q‖²)| <= a·‖q‖² + c·max‖x‖² for every query/candidate pair.

    With γ(v) = n·v/(1 − n·v), n = e + 3, the worst-case rounding errors are: the GEMM dot product and its
    fused ‖x‖² term γ(u_gemm)·(‖q‖² + 2‖x‖²); the norms γ(u)·(‖q‖² + ‖x‖²); the direct re-rank
    δ = Σ(q−x)², at most γ(u)·2(‖q‖² + ‖x‖²); one more γ(u)·‖q‖² for faiss' own ‖q‖². Being worst case,
    a fallback is triggered only by genuine near-ties.
    """
    n = e + 3

    def gamma(v: float) -> float:
        return n * v / max(1e-3, 1.0 - n * v)

    gg, g = gamma(u_gemm), gamma(u)
    return 1.01 * (gg + 4 * g), 1.01 * (2 * gg + 3 * g)


# ----------------------------------------------------------------------------------------------------------
# GEMM: oneDNN on CPU when it is there (about 2× MKL's fp32 speed on the AVX-512 EPYC we measured on),
# torch.mm / baddbmm elsewhere. Only the shortlist depends on it; the results do not (exact re-rank).

_ONEDNN_PROBED: bool | None = None


def _probe_onednn() -> bool:
    """Is `torch.ops.mkldnn._linear_pointwise` (the op torch.compile's CPU backend uses) there and fp32-exact?"""
    if os.environ.get("DERAINKIT_KNN_ONEDNN", "1") == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        a = torch.randn(37, 300, generator=g)
        w = torch.randn(53, 300, generator=g)
        bias = torch.randn(53, generator=g)
        y = torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")
        if y.shape != (37, 53) or y.dtype != torch.float32:
            return False
        ref = a.double() @ w.double().t() + bias.double()
        # an fp32 GEMM stays within γ_301 of Σ|a||w|; bf16/TF32 internals would not
        bound = 1.01 * 301 * 2.0 ** -24 * (a.abs().double() @ w.abs().double().t() + bias.abs().double())
        return bool(((y.double() - ref).abs() <= bound + 1e-30).all())
    except Exception:  # missing op, changed signature, no oneDNN: use torch.mm
        return False


def _use_onednn(t: Tensor, u_gemm: float) -> bool:
    global _ONEDNN_PROBED
    if t.device.type != "cpu" or t.dtype != torch.float32 or u_gemm != 2.0 ** -24:
        return False
    if _ONEDNN_PROBED is None:
        _ONEDNN_PROBED = _probe_onednn()
    return _ONEDNN_PROBED


def _linear(qc: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """qc @ w.T + bias with oneDNN (fp32, CPU)."""
    return torch.ops.mkldnn._linear_pointwise(qc, w, bias, "none", [], "")


# ----------------------------------------------------------------------------------------------------------
# exact selection from a block of GEMM-form distances

def _lexsort_rows(dist: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (dist, idx) ascending."""
    idx_s, p = idx.sort(dim=-1)
    dist_s = dist.gather(-1, p)
    dist_s, p2 = dist_s.sort(dim=-1, stable=True)
    return dist_s, idx_s.gather(-1, p2)


def _direct_sqdist(q: Tensor, x: Tensor) -> Tensor:
    """Σ(q − x)² over the last dim; q broadcasts against x."""
    d = x - q
    return d.square_().sum(-1)


def _topk_pairs(rr: Tensor, cc: Tensor, dd: Tensor, nrows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of a (row, col, dist) pair list: the k pairs smallest by (dist, col).

    Returns (dist nrows×k, col nrows×k, ok nrows bool); ok is False for rows with fewer than k pairs.
    """
    if rr.numel() == 0:
        z = torch.zeros(nrows, k, dtype=dd.dtype, device=dd.device)
        return z, z.to(torch.int64), torch.zeros(nrows, dtype=torch.bool, device=dd.device)
    p = torch.argsort(cc, stable=True)
    p = p[torch.argsort(dd[p], stable=True)]
    p = p[torch.argsort(rr[p], stable=True)]
    counts = torch.bincount(rr, minlength=nrows)
    starts = torch.cumsum(counts, 0) - counts
    pos = (starts[:, None] + torch.arange(k, device=rr.device)[None, :]).clamp_max(rr.numel() - 1)
    sel = p[pos]
    return dd[sel], cc[sel], counts >= k


def _pairs_sqdist(qrows: Tensor, cand_flat: Tensor, rr: Tensor, ci: Tensor, budget: int) -> Tensor:
    """Direct Σ(q − x)² for the pairs (qrows[rr], cand_flat[ci]), in pieces that fit the budget."""
    e = qrows.shape[1]
    dd = torch.empty(rr.numel(), dtype=qrows.dtype, device=qrows.device)
    step = max(1, budget // (2 * qrows.element_size() * e))
    for p0 in range(0, rr.numel(), step):
        p1 = min(rr.numel(), p0 + step)
        dd[p0:p1] = _direct_sqdist(qrows.index_select(0, rr[p0:p1]), cand_flat.index_select(0, ci[p0:p1]))
    return dd


_GROUPS = 16  # column groups of the two-stage selection


def _smallest(D: Tensor, kq: int) -> tuple[Tensor, Tensor]:
    """The kq smallest values of each row of D (ascending) and their columns.

    On CPU a two-stage selection beats `topk` on long rows (about 3× at 16384 columns): the columns form
    W = U // 16 interleaved groups of 16 (column j is in group j mod W), one vectorised `amin` pass gives
    each group's minimum, and only the kq groups with the smallest minima are searched. Every column outside
    them is >= the largest of those kq minima, which is >= the kq-th value found, so the result is exact.
    """
    R, U = D.shape
    W = U // _GROUPS
    if D.device.type != "cpu" or W < 8 * kq:
        return torch.topk(D, kq, dim=1, largest=False, sorted=True)
    mins = D[:, : _GROUPS * W].view(R, _GROUPS, W).amin(1)  # R × W, contiguous reduction over groups
    gi = torch.topk(mins, kq, dim=1, largest=False, sorted=False).indices
    cols = (gi[:, :, None] + W * torch.arange(_GROUPS, device=D.device)).view(R, kq * _GROUPS)
    if U > _GROUPS * W:  # leftover columns are always searched
        cols = torch.cat([cols, torch.arange(_GROUPS * W, U, device=D.device).expand(R, -1)], 1)
    v, p = torch.topk(D.gather(1, cols), kq, dim=1, largest=False, sorted=True)
    return v, cols.gather(1, p)


def _select(D: Tensor, k: int, qrows: Tensor, qn: Tensor, tol: Tensor, cand_flat: Tensor,
            lut: Tensor | None, nq: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact top-k of each row of a distance block.

    D: R×U GEMM-form values g = ‖x‖² − 2 q·x, +inf where a query may not look (outside its window).
    qrows R×e queries, qn R their squared norms, tol R bounds on |g − (δ − ‖q‖²)| (δ = direct Σ(q−x)²).
    cand_flat: candidates N×e. lut: None if D's column u is candidate u; else (R/nq)×U, the candidate
    (row of cand_flat) behind column u for each group of nq consecutive rows.
    Returns (δ R×k, candidate rows R×k) sorted by (δ, candidate row).
    """
    R, U = D.shape
    e = qrows.shape[1]
    kq = min(k + 1, U)
    v, u = _smallest(D, kq)
    win = u[:, :k]
    if lut is not None:
        nb = lut.shape[0]
        win = torch.gather(lut.view(nb, 1, U).expand(nb, nq, U), 2, win.reshape(nb, nq, k)).view(R, k)
    # exact distances of the k GEMM winners: one gather of k·e values per query
    xs = cand_flat.index_select(0, win.reshape(-1)).view(R, k, e)
    d = xs.sub_(qrows[:, None, :]).square_().sum(-1)
    d, win = _lexsort_rows(d, win)
    if kq == k:  # every allowed candidate was taken
        return d, win
    # Complete unless a candidate outside the winners could have δ <= the k-th exact distance. Any such
    # candidate has g >= v[:, k] (the (k+1)-th GEMM value), hence δ >= v[:, k] + ‖q‖² − tol.
    need = v[:, k] + qn - tol <= d[:, k - 1]
    if not bool(need.any()):
        return d, win
    rows = need.nonzero().squeeze(1)
    thr = d[rows, k - 1] - qn[rows] + tol[rows]
    # every candidate that could belong to the answer has g <= thr: re-rank them all exactly
    step = max(1, budget // max(1, 24 * U))
    for s0 in range(0, rows.numel(), step):
        rs = rows[s0:s0 + step]
        fd, fi, ok = _threshold_rerank(D, rs, thr[s0:s0 + step], qrows, cand_flat, lut, nq, k, budget)
        if not bool(ok.all()):
            # the error bound failed (cannot happen for finite inputs): take every allowed candidate
            bad = (~ok).nonzero().squeeze(1)
            big = torch.full((bad.numel(),), torch.finfo(D.dtype).max, dtype=D.dtype, device=D.device)
            fd[bad], fi[bad], _ = _threshold_rerank(D, rs[bad], big, qrows, cand_flat, lut, nq, k, budget)
        d[rs], win[rs] = fd, fi
    return d, win


def _threshold_rerank(D, rs, thr, qrows, cand_flat, lut, nq, k, budget):
    rr, uu = (D.index_select(0, rs) <= thr[:, None]).nonzero(as_tuple=True)
    orig = rs[rr]
    cc = uu if lut is None else lut[orig // nq, uu]
    dd = _pairs_sqdist(qrows, cand_flat, orig, cc, budget)
    return _topk_pairs(rr, cc, dd, rs.numel(), k)


# ----------------------------------------------------------------------------------------------------------
# global search (torch)

# Distance bytes per query block on CPU: 16 MB blocks stay in the last-level cache between the GEMM that
# writes them and the selection that reads them (2-core EPYC: 256-row blocks at n = 16384 were fastest).
_GLOBAL_BLOCK_BYTES_CPU = 16 << 20


def _global_torch(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact global kNN for one batch item: q m×e, x n×e (same float dtype)."""
    m, e = q.shape
    n = x.shape[0]
    el = q.element_size()
    xn = (x * x).sum(-1)
    qn = (q * q).sum(-1)
    _check_norms(qn, xn)
    u_gemm = _gemm_roundoff(q.dtype, q.device)
    a, c = _tol_coeffs(e, u_gemm, _roundoff(q.dtype))
    tol = a * qn + c * xn.max()
    if n * el > budget:
        return _global_torch_chunked(q, x, xn, qn, tol, k, budget)
    block = budget if q.device.type == "cuda" else min(budget, _GLOBAL_BLOCK_BYTES_CPU)
    rows = max(1, min(m, block // (n * el)))
    kq = min(n, k + 1)
    if _use_onednn(q, u_gemm):
        # g = (−2q)·x + ‖x‖² in one fused oneDNN call; scaling by −2 is exact, and scaling the queries
        # (not x) keeps the extra copy small
        qm2 = q * -2.0
        gemm = lambda r0, r1: _linear(qm2[r0:r1], x, xn)  # noqa: E731
    else:
        buf = torch.empty(rows, n, dtype=q.dtype, device=q.device)  # reused: no page faults per block
        xt, xn_row = x.t(), xn.unsqueeze(0)
        gemm = lambda r0, r1: torch.addmm(xn_row, q[r0:r1], xt, beta=1.0, alpha=-2.0,  # noqa: E731
                                          out=buf[: r1 - r0])
    # pass 1: GEMM + selection per block of queries; only the k winners and the (k+1)-th value are kept
    win = torch.empty(m, k, dtype=torch.int64, device=q.device)
    nxt = torch.full((m,), math.inf, dtype=q.dtype, device=q.device)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        v, u = _smallest(gemm(r0, r1), kq)
        win[r0:r1] = u[:, :k]
        if kq > k:
            nxt[r0:r1] = v[:, k]
    # pass 2, in few large ops: exact distances of the winners, (dist, idx) order, completeness check
    out_d = torch.empty(m, k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(m, k, dtype=torch.int64, device=q.device)
    step = max(1, block // (k * e * el))  # gathered winners: one block's worth of memory
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        xs = x.index_select(0, win[r0:r1].reshape(-1)).view(r1 - r0, k, e)
        d = xs.sub_(q[r0:r1, None, :]).square_().sum(-1)
        out_d[r0:r1], out_i[r0:r1] = _lexsort_rows(d, win[r0:r1])
    # a candidate outside the winners has g >= the (k+1)-th value, so δ >= nxt + ‖q‖² − tol
    need = nxt + qn - tol <= out_d[:, k - 1]
    if bool(need.any()):  # near-ties: redo those few queries together, exactly
        rows_fb = need.nonzero().squeeze(1)
        thr = out_d[rows_fb, k - 1] - qn[rows_fb] + tol[rows_fb]
        out_d[rows_fb], out_i[rows_fb] = _global_fallback(q[rows_fb], x, xn, thr, k, budget)
    return out_d, out_i


def _global_torch_chunked(q, x, xn, qn, tol, k, budget):
    """Global search when one row of distances exceeds the budget: candidates in chunks too."""
    m, e = q.shape
    n = x.shape[0]
    nc = max(1, budget // q.element_size())
    out_d = torch.empty(m, k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(m, k, dtype=torch.int64, device=q.device)
    kq = min(n, k + 1)
    for r0 in range(m):  # a single query row already fills the budget
        qc = q[r0:r0 + 1]
        best_v = best_i = None
        for c0 in range(0, n, nc):
            c1 = min(n, c0 + nc)
            g = torch.addmm(xn[c0:c1].unsqueeze(0), qc, x[c0:c1].t(), beta=1.0, alpha=-2.0)
            v, i = torch.topk(g, min(kq, c1 - c0), dim=1, largest=False)
            i = i + c0
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            # keep the kq smallest, lower index first among equal values (stable sort on ascending idx)
            i, p = i.sort(dim=1)
            v, p2 = v.gather(1, p).sort(dim=1, stable=True)
            best_v, best_i = v[:, :kq], i.gather(1, p2)[:, :kq]
        xs = x.index_select(0, best_i[0, :k])
        d, gi = _lexsort_rows(_direct_sqdist(qc, xs)[None], best_i[:, :k])
        if kq > k and bool(best_v[0, k] + qn[r0] - tol[r0] <= d[0, k - 1]):
            thr = d[:, k - 1] - qn[r0:r0 + 1] + tol[r0:r0 + 1]
            d, gi = _global_fallback(qc, x, xn, thr, k, budget)
        out_d[r0], out_i[r0] = d[0], gi[0]
    return out_d, out_i


def _global_fallback(qf: Tensor, x: Tensor, xn: Tensor, thr: Tensor, k: int, budget: int
                     ) -> tuple[Tensor, Tensor]:
    """Exact top-k for a few queries without a stored distance block: recompute the GEMM values in
    candidate chunks and re-rank exactly every candidate with g <= thr."""
    r = qf.shape[0]
    n = x.shape[0]
    grp = max(1, budget // (24 * n))  # worst case (all ties) every candidate passes: ~24 B per pair
    if r > grp:
        parts = [_global_fallback(qf[i:i + grp], x, xn, thr[i:i + grp], k, budget) for i in range(0, r, grp)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    nc = max(1, min(n, budget // (qf.element_size() * r)))
    rr_l, cc_l = [], []
    for c0 in range(0, n, nc):
        c1 = min(n, c0 + nc)
        g = torch.addmm(xn[c0:c1].unsqueeze(0), qf, x[c0:c1].t(), beta=1.0, alpha=-2.0)
        rr, cc = (g <= thr[:, None]).nonzero(as_tuple=True)
        rr_l.append(rr)
        cc_l.append(cc + c0)
    rr, cc = torch.cat(rr_l), torch.cat(cc_l)
    dd = _pairs_sqdist(qf, x, rr, cc, budget)
    fd, fi, ok = _topk_pairs(rr, cc, dd, r, k)
    if not bool(ok.all()):  # cannot happen for finite inputs; stay exact anyway
        bad = (~ok).nonzero().squeeze(1)
        big = torch.full((bad.numel(),), torch.finfo(qf.dtype).max, dtype=qf.dtype, device=qf.device)
        fd[bad], fi[bad] = _global_fallback(qf[bad], x, xn, big, k, budget)
    return fd, fi


# ----------------------------------------------------------------------------------------------------------
# windowed search (torch, blocked local GEMM)

# Distance bytes per step on CPU: the query blocks of a step share the masking and selection ops. On an
# idle machine 8–64 MB steps run equally fast; on a busy one (other processes on the cores) every parallel
# op waits for a descheduled thread, so fewer, larger steps and blocks are much faster there.
_WINDOW_STEP_BYTES_CPU = 32 << 20
# Fixed cost of one query block, in distance entries (its GEMM call plus its share of the step's ops). With
# 2e5, 512² MSGNN windows get 24×24 blocks: ~10% more work than the idle-machine optimum (16×20), ~1.5×
# faster under load.
_BLOCK_OVERHEAD = 200000.0
_BLOCK_SIDES = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48)


def _span(O: Tensor, s: int) -> int:
    """Largest O[i+s-1] − O[i]: how far the window origin moves across s consecutive query rows."""
    if s >= O.numel():
        return int(O[-1] - O[0])
    return int((O[s - 1:] - O[: O.numel() - s + 1]).max())


def _block_plan(R: Tensor, C: Tensor, S: int, n1: int, n2: int, b: int, el: int, budget: int
                ) -> tuple[int, int, int, int]:
    """Query block (br × bc) and its candidate rectangle (uh × uw), cheapest per query.

    Every block of a search uses the same rectangle size (so blocks batch into one GEMM). The distance
    entries computed per query are uh·uw; small blocks waste fewer of them but make GEMMs with few rows,
    which run below peak (factor 1 + 40/nq), and every block has a fixed cost (`_BLOCK_OVERHEAD`).
    Fitted on a 2-core EPYC.
    """
    m1, m2 = R.numel(), C.numel()
    best, best_cost = None, math.inf
    for br in sorted({min(s, m1) for s in _BLOCK_SIDES}):
        uh = min(n1, S + _span(R, br))
        for bc in sorted({min(s, m2) for s in _BLOCK_SIDES}):
            uw = min(n2, S + _span(C, bc))
            nq = br * bc
            if b * nq * uh * uw * el > budget and best is not None:
                continue
            cost = uh * uw * (1.0 + 40.0 / nq) + _BLOCK_OVERHEAD / nq
            if cost < best_cost:
                best, best_cost = (br, bc, uh, uw), cost
    return best


def _windowed_torch(q: Tensor, x: Tensor, k: int, qg: tuple[int, int], cg: tuple[int, int],
                    window: Window, budget: int) -> tuple[Tensor, Tensor]:
    """Blocked windowed kNN. q: b×m×e, x: b×n×e (same dtype, contiguous)."""
    b, m, e = q.shape
    n = x.shape[1]
    m1, m2 = qg
    n1, n2 = cg
    dev = q.device
    el = q.element_size()
    S = window_side(window, cg)
    R, C = window_origins(qg, cg, window, dev)
    Rc, Cc = R.cpu(), C.cpu()
    if b > 1 and b * S * S * el > budget:  # even one query per item is over budget: one item at a time
        parts = [_windowed_torch(q[i:i + 1], x[i:i + 1], k, qg, cg, window, budget) for i in range(b)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    br, bc, uh, uw = _block_plan(Rc, Cc, S, n1, n2, b, el, budget)
    U, nq = uh * uw, br * bc
    inf = math.inf
    i64 = dict(dtype=torch.int64, device=dev)

    # Block grid. The last block of a row/column is shifted back to end at the grid edge, overlapping its
    # neighbour, so that every block has the same shape; its overlapping queries are computed twice but
    # written once (only by the block that owns them). Each block reads the uh×uw candidate rectangle that
    # holds all of its queries' windows.
    nat_rows = list(range(0, m1, br))
    row_starts = [min(i, m1 - br) for i in nat_rows]
    nat_cols = torch.arange(0, m2, bc, dtype=torch.int64)
    col_starts = torch.clamp(nat_cols, max=m2 - bc)
    col_owned = (col_starts[:, None] + torch.arange(bc) >= nat_cols[:, None]).to(dev)  # nbc × bc
    last_col_shifted = bool(col_starts[-1] != nat_cols[-1])
    ucs = torch.minimum(Cc[col_starts], torch.tensor(n2 - uw)).to(dev)  # rectangle column starts
    col_starts = col_starts.to(dev)
    nbc = col_starts.numel()
    ar_b = torch.arange(b, **i64).view(b, 1, 1, 1)
    # flat row offsets (with stripe start 0) of every query block / candidate rectangle: b × nbc × (.)
    q_off = (ar_b * m + torch.arange(br, **i64).view(1, 1, br, 1) * m2
             + col_starts.view(1, nbc, 1, 1) + torch.arange(bc, **i64).view(1, 1, 1, bc))
    u_off = (ar_b * n + torch.arange(uh, **i64).view(1, 1, uh, 1) * n2
             + ucs.view(1, nbc, 1, 1) + torch.arange(uw, **i64).view(1, 1, 1, uw))
    q_off, u_off = q_off.view(b, nbc, nq), u_off.view(b, nbc, U)
    # colpen[j, c, w]: 0 if rectangle column w of block column j is inside query column c's window, else inf
    cq = C[col_starts.view(nbc, 1) + torch.arange(bc, **i64)]  # window origin per query column
    ucol = ucs.view(nbc, 1) + torch.arange(uw, **i64)
    colpen = torch.where((ucol[:, None, :] >= cq[:, :, None]) & (ucol[:, None, :] < cq[:, :, None] + S),
                         0.0, inf).to(q.dtype)

    q_flat, x_flat = q.reshape(b * m, e), x.reshape(b * n, e)
    qn, xn = (q_flat * q_flat).sum(-1), (x_flat * x_flat).sum(-1)
    _check_norms(qn, xn)
    u_gemm = _gemm_roundoff(q.dtype, dev)
    ta, tc = _tol_coeffs(e, u_gemm, _roundoff(q.dtype))
    xn_max = xn.max()
    use_dnn = _use_onednn(q, u_gemm)
    step = budget if dev.type == "cuda" else min(budget, _WINDOW_STEP_BYTES_CPU)
    G = max(1, min(nbc, step // max(1, b * nq * U * el)))  # query blocks per batched GEMM
    out_d = torch.empty(b * m, k, dtype=q.dtype, device=dev)
    out_i = torch.empty(b * m, k, dtype=torch.int64, device=dev)
    ra = torch.arange(uh, **i64)
    for r0, nat_r0 in zip(row_starts, nat_rows):
        row_owned = torch.arange(r0, r0 + br, **i64) >= nat_r0  # br
        ur0 = min(int(Rc[r0]), n1 - uh)
        rq = R[r0:r0 + br, None] - ur0
        rowpen = torch.where((ra[None, :] >= rq) & (ra[None, :] < rq + S), 0.0, inf).to(q.dtype)  # br × uh
        for j0 in range(0, nbc, G):
            j1 = min(nbc, j0 + G)
            g = j1 - j0
            qidx = (q_off[:, j0:j1] + r0 * m2).reshape(-1)  # (b·g·nq) rows of q_flat, block-major
            lut = (u_off[:, j0:j1] + ur0 * n2).reshape(b * g, U)  # rows of x_flat behind each column
            Qg = q_flat.index_select(0, qidx).view(b * g, nq, e)
            Xg = x_flat.index_select(0, lut.view(-1)).view(b * g, U, e)
            XNg = xn.index_select(0, lut.view(-1)).view(b * g, U)
            if use_dnn:  # one oneDNN call per block (different candidates each); ~2× MKL's bmm here
                Qm2 = Qg * -2.0  # exact; Qg itself is kept for the re-rank
                D = torch.stack([_linear(Qm2[t], Xg[t], XNg[t]) for t in range(b * g)])
            else:
                D = torch.baddbmm(XNg.view(b * g, 1, U), Qg, Xg.transpose(1, 2), beta=1.0, alpha=-2.0)
            D6 = D.view(b, g, br, bc, uh, uw)
            D6.add_(rowpen.view(1, 1, br, 1, uh, 1))
            D6.add_(colpen[j0:j1].view(1, g, 1, bc, 1, uw))
            QN = qn.index_select(0, qidx)
            d, i = _select(D.view(b * g * nq, U), k, Qg.view(-1, e), QN, ta * QN + tc * xn_max, x_flat, lut, nq,
                           budget)
            if r0 != nat_r0 or (j1 == nbc and last_col_shifted):  # the step holds a shifted block
                keep = (row_owned.view(1, 1, br, 1) & col_owned[j0:j1].view(1, g, 1, bc)).expand(b, g, br, bc)
                keep = keep.reshape(-1)
                qidx, d, i = qidx[keep], d[keep], i[keep]
            out_d.index_copy_(0, qidx, d)  # unique indices: deterministic on every device
            out_i.index_copy_(0, qidx, i)
    # candidate rows of x_flat -> indices within each batch item
    out_i = out_i.view(b, m, k) - (torch.arange(b, **i64) * n).view(b, 1, 1)
    return out_d.view(b, m, k), out_i


# ----------------------------------------------------------------------------------------------------------
# faiss (optional, global only, CPU tensors)

def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _global_faiss(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """faiss brute-force top-(k+1), then the same exact re-rank and completeness check as the torch path.

    Results are identical to backend="torch" (same distances, same tie-breaking); only the GEMM and the
    selection come from faiss.
    """
    import faiss
    import numpy as np

    xn = (x * x).sum(-1)
    qn = (q * q).sum(-1)
    _check_norms(qn, xn)  # before faiss sees the data
    m, e = q.shape
    n = x.shape[0]
    kq = min(n, k + 1)
    q32 = q.to(torch.float32).contiguous()
    x32 = x.to(torch.float32).contiguous()
    gval, gidx = faiss.knn(q32.numpy(), x32.numpy(), kq)  # ascending ‖q‖² + ‖x‖² − 2 q·x, fp32 GEMM form
    gval = torch.from_numpy(np.ascontiguousarray(gval)).to(q.dtype)
    gidx = torch.from_numpy(np.ascontiguousarray(gidx)).to(torch.int64)
    d, i = _lexsort_rows(_direct_sqdist(q[:, None, :], x[gidx[:, :k]]), gidx[:, :k])
    if kq == k:
        return d, i
    ta, tc = _tol_coeffs(e, 2.0 ** -24, _roundoff(q.dtype))  # faiss always works in fp32
    tol = ta * qn + tc * xn.max()
    need = gval[:, k] - tol <= d[:, k - 1]
    if bool(need.any()):
        rows = need.nonzero().squeeze(1)
        thr = d[rows, k - 1] - qn[rows] + tol[rows]
        d[rows], i[rows] = _global_fallback(q[rows], x, xn, thr, k, budget)
    return d, i


# ----------------------------------------------------------------------------------------------------------
# public API

def knn(query: Tensor, cand: Tensor, k: int, *, query_grid: tuple[int, int] | None = None,
        cand_grid: tuple[int, int] | None = None, window: Window | None = None,
        backend: str = "auto", memory_budget: int | None = None, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Exact k nearest candidates (squared L2) of every query patch.

    query: b×m×e, cand: b×n×e on the same device. Returns (dist b×m×k float32 ascending, idx b×m×k int64
    into cand's n). Ties are broken by the lower candidate index. window=None searches all candidates;
    with a `Window` only the S×S block of each query's window is searched (query_grid, cand_grid needed).
    `eps` is added to every returned distance (MSGNN adds 1e-5); it does not change the ranking.
    Distances are computed in float32 (float64 if an input is float64) directly as Σ(q − x)², so they are
    accurate even when tiny next to the norms. No distance block larger than `memory_budget` bytes is
    formed (default: from the free memory of the device, see `default_memory_budget`).

    backend: "auto" and "torch" run the pure-PyTorch engine (on CPU its GEMMs go through oneDNN when
    available); "faiss" (global search on CPU tensors, needs faiss) takes faiss' brute-force shortlist and
    then the same exact re-rank, so its results are identical to "torch"; "triton" is not implemented.
    """
    if backend not in _BACKENDS:
        raise KnnError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    qg, cg = _validate(query, cand, k, query_grid, cand_grid, window)
    if memory_budget is None:
        memory_budget = default_memory_budget(query.device)
    elif not isinstance(memory_budget, int) or isinstance(memory_budget, bool) or memory_budget < 1:
        raise KnnError(f"memory_budget must be a positive int (bytes), got {memory_budget!r}")
    dtype = _compute_dtype(query, cand)
    q = _as_float(query.detach(), dtype)
    x = _as_float(cand.detach(), dtype)

    if backend == "triton":
        raise KnnError("the triton backend is not available in this build; use backend='torch' or 'auto'")
    if backend == "faiss":
        if window is not None:
            raise KnnError("backend='faiss' supports global search only (window=None)")
        if q.device.type != "cpu":
            raise KnnError("backend='faiss' needs CPU tensors (faiss-gpu is not supported)")
        if not _faiss_available():
            raise KnnError("backend='faiss' needs the faiss package (pip install faiss-cpu)")

    with torch.no_grad():
        if window is not None:
            d, i = _windowed_torch(q, x, k, qg, cg, window, memory_budget)
        else:
            fn = _global_faiss if backend == "faiss" else _global_torch
            ds, is_ = [], []
            for bi in range(q.shape[0]):
                d1, i1 = fn(q[bi], x[bi], k, memory_budget)
                ds.append(d1)
                is_.append(i1)
            d, i = torch.stack(ds), torch.stack(is_)
    d = d.to(torch.float32)
    if eps:
        d = d + eps
    return d, i


def knn_reference_fp64(query: Tensor, cand: Tensor, k: int, *, query_grid: tuple[int, int] | None = None,
                       cand_grid: tuple[int, int] | None = None, window: Window | None = None,
                       eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Brute-force float64 reference for tests: same semantics as `knn`, dist returned as float64.

    Builds the full b×m×n distance matrix (direct differences), masks candidates outside each query's
    window with +inf, and sorts stably, so ties go to the lower candidate index.
    """
    qg, cg = _validate(query, cand, k, query_grid, cand_grid, window)
    q = query.detach().to(torch.float64)
    x = cand.detach().to(torch.float64)
    b, m, e = q.shape
    n = x.shape[1]
    I = window_index(qg, cg, window, q.device) if window is not None else None  # m × o
    out_d = torch.empty(b, m, k, dtype=torch.float64, device=q.device)
    out_i = torch.empty(b, m, k, dtype=torch.int64, device=q.device)
    step = max(1, (64 << 20) // (8 * n * e))  # direct differences, ~64 MB at a time
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        d = _direct_sqdist(q[:, r0:r1, None, :], x[:, None, :, :])  # b × rows × n
        if I is not None:
            mask = torch.ones(r1 - r0, n, dtype=torch.bool, device=q.device)
            mask.scatter_(1, I[r0:r1], False)
            d = d.masked_fill(mask, math.inf)
        d_s, p = d.sort(dim=2, stable=True)  # stable: ties keep index order
        out_d[:, r0:r1], out_i[:, r0:r1] = d_s[:, :, :k], p[:, :, :k]
    return out_d + eps, out_i
