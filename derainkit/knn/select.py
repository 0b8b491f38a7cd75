"""Exact selection: from a GEMM shortlist to the exact k nearest candidates. Every search path ends here.

Notation, per query q and candidate x: δ = Σ(q − x)² is the exact squared distance, computed directly
(the returned distance); g = ‖x‖² − 2 q·x is its GEMM form, g ≈ δ − ‖q‖², cheap for many pairs but
inaccurate when δ is small next to the norms. `GemmErrorBound` gives `tol` with |g − (δ − ‖q‖²)| <= tol.

The rule, in three steps (`exact_topk`):
1. Shortlist (done by the caller, on g): the k+1 smallest GEMM values of the query, the first k being the
   *winners*, the (k+1)-th value `next_value`.
2. Re-rank: δ of the k winners, sorted by (δ, candidate index), which breaks ties by the lower index.
3. Completeness: any other candidate has g >= next_value, hence δ >= next_value + ‖q‖² − tol. If that
   lower bound is above the k-th winner's δ, no outsider can enter the answer and the query is done.
   Otherwise (near-ties, duplicate candidates) the query falls back (`exact_fallback`): every candidate
   with g <= δ_k − ‖q‖² + tol (a superset of all candidates with δ <= δ_k) gets its δ computed, and the
   k smallest by (δ, index) are the answer.
So the results depend neither on the GEMM (oneDNN, MKL, cuBLAS, faiss), nor on the blocking or the memory
budget: only on δ, which is always computed the same way.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from derainkit.knn.errors import KnnError

__all__ = ["unit_roundoff", "gemm_unit_roundoff", "GemmErrorBound", "check_norms", "direct_sqdist",
           "lexsort_rows", "smallest", "exact_topk", "exact_fallback", "PairsWithin"]

# pairs_within(rows, thr) -> (pos, cand): every candidate `cand` whose GEMM value for query rows[pos] is
# <= thr[pos] (pos indexes `rows`); candidates a query may not look at (outside its window) never pass
PairsWithin = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# Memory per (query, candidate) pair of a fallback, in bytes: the comparison mask, the pair indices and
# the distance (~24 B). In the worst case (all ties) every candidate passes, so a fallback group holds
# budget // (24 · candidates per query) queries. Only the grouping depends on it, never the results.
_FALLBACK_PAIR_BYTES = 24
# Two-stage selection (`smallest`): the columns form _GROUPS interleaved groups, and it is used only when
# each group has at least _TWO_STAGE_MIN_WIDTH·count columns (shorter rows take one `topk`, CUDA always
# does). On the project's 2-core AMD EPYC (Zen 3, AVX2) it was about 3× faster than `topk` at 16384
# columns. Speed only: both give the same values and, after the exact re-rank, the same results.
_GROUPS = 16
_TWO_STAGE_MIN_WIDTH = 8


def unit_roundoff(dtype: torch.dtype) -> float:
    return 2.0 ** -53 if dtype == torch.float64 else 2.0 ** -24


def gemm_unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of the shortlist GEMM under the current matmul precision settings (TF32, bf16)."""
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


@dataclass(frozen=True)
class GemmErrorBound:
    """|g − (δ − ‖q‖²)| <= per_query·‖q‖² + per_cand·max‖x‖² for every query/candidate pair.

    With γ(v) = n·v/(1 − n·v), n = e + 3, the worst-case rounding errors are: the GEMM dot product and its
    fused ‖x‖² term γ(u_gemm)·(‖q‖² + 2‖x‖²); the norms γ(u)·(‖q‖² + ‖x‖²); the direct re-rank
    δ = Σ(q−x)², at most γ(u)·2(‖q‖² + ‖x‖²); one more γ(u)·‖q‖² for faiss' own ‖q‖². A 1 % margin covers
    the rounding of the bound itself. Being worst case, a fallback is triggered only by genuine near-ties.
    """

    per_query: float
    per_cand: float

    @classmethod
    def for_gemm(cls, e: int, u_gemm: float, dtype: torch.dtype) -> "GemmErrorBound":
        """The bound for patch length e, GEMM unit roundoff u_gemm, and δ computed in `dtype`."""
        n = e + 3

        def gamma(v: float) -> float:
            return n * v / max(1e-3, 1.0 - n * v)

        gg, g = gamma(u_gemm), gamma(unit_roundoff(dtype))
        return cls(1.01 * (gg + 4 * g), 1.01 * (2 * gg + 3 * g))

    def tol(self, qn: Tensor, xn_max: Tensor) -> Tensor:
        """Per-query tolerance from the queries' squared norms and the largest candidate squared norm."""
        return self.per_query * qn + self.per_cand * xn_max


def check_norms(qn: Tensor, xn: Tensor) -> None:
    """Squared norms must be finite (the error bound needs them): catches NaN/inf inputs and overflow."""
    for name, t in (("query", qn), ("cand", xn)):
        if not bool(torch.isfinite(t).all()):
            raise KnnError(f"{name} contains NaN or inf values (or values whose squares overflow)")


def direct_sqdist(q: Tensor, x: Tensor) -> Tensor:
    """δ = Σ(q − x)² over the last dim; q broadcasts against x."""
    d = x - q
    return d.square_().sum(-1)


def lexsort_rows(dist: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (dist, idx) ascending."""
    idx_s, p = idx.sort(dim=-1)
    dist_s = dist.gather(-1, p)
    dist_s, p2 = dist_s.sort(dim=-1, stable=True)
    return dist_s, idx_s.gather(-1, p2)


def smallest(g: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` smallest values of each row of g (ascending) and their columns.

    On CPU, long rows use a two-stage selection: the columns form width = U // 16 interleaved groups of 16
    (column j is in group j mod width), one vectorised `amin` pass gives each group's minimum, and only the
    `count` groups with the smallest minima are searched. Every column outside them is >= the largest of
    those minima, which is >= the count-th value found, so the result is exact.
    """
    rows, ncols = g.shape
    width = ncols // _GROUPS
    if g.device.type != "cpu" or width < _TWO_STAGE_MIN_WIDTH * count:
        return torch.topk(g, count, dim=1, largest=False, sorted=True)
    mins = g[:, : _GROUPS * width].view(rows, _GROUPS, width).amin(1)  # rows × width
    best_groups = torch.topk(mins, count, dim=1, largest=False, sorted=False).indices
    cols = (best_groups[:, :, None] + width * torch.arange(_GROUPS, device=g.device)).view(rows, count * _GROUPS)
    if ncols > _GROUPS * width:  # leftover columns are always searched
        cols = torch.cat([cols, torch.arange(_GROUPS * width, ncols, device=g.device).expand(rows, -1)], 1)
    v, p = torch.topk(g.gather(1, cols), count, dim=1, largest=False, sorted=True)
    return v, cols.gather(1, p)


def _rerank_winners(queries: Tensor, cands: Tensor, winners: Tensor, step: int | None
                    ) -> tuple[Tensor, Tensor]:
    """δ of each query's winners (candidate rows R×k), sorted by (δ, candidate row); `step` rows at a time."""
    nrows, k = winners.shape
    e = queries.shape[1]
    if step is None or step >= nrows:
        xs = cands.index_select(0, winners.reshape(-1)).view(nrows, k, e)
        return lexsort_rows(xs.sub_(queries[:, None, :]).square_().sum(-1), winners)
    out_d = torch.empty(nrows, k, dtype=queries.dtype, device=queries.device)
    out_i = torch.empty(nrows, k, dtype=torch.int64, device=queries.device)
    for r0 in range(0, nrows, step):
        r1 = min(nrows, r0 + step)
        xs = cands.index_select(0, winners[r0:r1].reshape(-1)).view(r1 - r0, k, e)
        out_d[r0:r1], out_i[r0:r1] = lexsort_rows(xs.sub_(queries[r0:r1, None, :]).square_().sum(-1),
                                                  winners[r0:r1])
    return out_d, out_i


def exact_topk(queries: Tensor, qn: Tensor, tol: Tensor, cands: Tensor, winners: Tensor,
               next_value: Tensor | None, pairs_within: PairsWithin, cands_per_query: int, budget: int,
               rerank_step: int | None = None) -> tuple[Tensor, Tensor]:
    """Steps 2 and 3 of the module docstring: exact re-rank of the winners, completeness check, fallback.

    queries R×e, qn their ‖q‖², tol their GEMM tolerance, cands N×e. winners: R×k candidate rows (rows of
    cands) of the k smallest GEMM values; next_value: R, the (k+1)-th smallest, or None when the k winners
    are every candidate the query may see. pairs_within recomputes or looks up GEMM values for a fallback;
    cands_per_query (how many candidates a query may see) sizes its groups. rerank_step bounds the rows
    re-ranked at once (None: all). Returns (δ R×k, candidate rows R×k) sorted by (δ, row).
    """
    k = winners.shape[1]
    d, idx = _rerank_winners(queries, cands, winners, rerank_step)
    if next_value is None:
        return d, idx
    need = next_value + qn - tol <= d[:, k - 1]
    if bool(need.any()):
        rows = need.nonzero().squeeze(1)
        thr = d[rows, k - 1] - qn[rows] + tol[rows]
        d[rows], idx[rows] = exact_fallback(queries, cands, rows, thr, pairs_within, k, cands_per_query, budget)
    return d, idx


def _pairs_sqdist(queries: Tensor, cands: Tensor, qrow: Tensor, crow: Tensor, budget: int) -> Tensor:
    """δ of the pairs (queries[qrow], cands[crow]), in pieces of at most `budget` bytes of differences."""
    e = queries.shape[1]
    dd = torch.empty(qrow.numel(), dtype=queries.dtype, device=queries.device)
    step = max(1, budget // (2 * queries.element_size() * e))
    for p0 in range(0, qrow.numel(), step):
        p1 = min(qrow.numel(), p0 + step)
        dd[p0:p1] = direct_sqdist(queries.index_select(0, qrow[p0:p1]), cands.index_select(0, crow[p0:p1]))
    return dd


def _topk_pairs(pos: Tensor, crow: Tensor, dd: Tensor, nrows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each of nrows queries, the k of its (candidate, δ) pairs smallest by (δ, candidate).

    pos: the query (0..nrows−1) of each pair. Returns (δ nrows×k, candidates nrows×k, ok nrows) where ok is
    False for a query with fewer than k pairs (its row is then filled with other queries' pairs).
    """
    if pos.numel() == 0:
        z = torch.zeros(nrows, k, dtype=dd.dtype, device=dd.device)
        return z, z.to(torch.int64), torch.zeros(nrows, dtype=torch.bool, device=dd.device)
    # three stable sorts: by candidate, then δ, then query, give (query, δ, candidate) order
    p = torch.argsort(crow, stable=True)
    p = p[torch.argsort(dd[p], stable=True)]
    p = p[torch.argsort(pos[p], stable=True)]
    counts = torch.bincount(pos, minlength=nrows)
    starts = torch.cumsum(counts, 0) - counts
    take = (starts[:, None] + torch.arange(k, device=pos.device)[None, :]).clamp_max(pos.numel() - 1)
    sel = p[take]
    return dd[sel], crow[sel], counts >= k


def _rerank_within(queries: Tensor, cands: Tensor, rows: Tensor, thr: Tensor, pairs_within: PairsWithin,
                   k: int, budget: int) -> tuple[Tensor, Tensor, Tensor]:
    pos, crow = pairs_within(rows, thr)
    dd = _pairs_sqdist(queries, cands, rows[pos], crow, budget)
    return _topk_pairs(pos, crow, dd, rows.numel(), k)


def exact_fallback(queries: Tensor, cands: Tensor, rows: Tensor, thr: Tensor, pairs_within: PairsWithin,
                   k: int, cands_per_query: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact top-k of the queries `rows` over every candidate whose GEMM value is <= thr (see module doc).

    Queries go in groups whose worst case (every candidate passes) fits the budget. Should the error bound
    ever fail so that fewer than k candidates pass (it cannot for finite inputs), the query is redone with
    the largest finite threshold, i.e. over every candidate it may see.
    """
    group = max(1, budget // max(1, _FALLBACK_PAIR_BYTES * cands_per_query))
    out_d = torch.empty(rows.numel(), k, dtype=queries.dtype, device=queries.device)
    out_i = torch.empty(rows.numel(), k, dtype=torch.int64, device=queries.device)
    for g0 in range(0, rows.numel(), group):
        g1 = min(rows.numel(), g0 + group)
        fd, fi, ok = _rerank_within(queries, cands, rows[g0:g1], thr[g0:g1], pairs_within, k, budget)
        if not bool(ok.all()):
            bad = (~ok).nonzero().squeeze(1)
            big = torch.full((bad.numel(),), torch.finfo(queries.dtype).max, dtype=queries.dtype,
                             device=queries.device)
            fd[bad], fi[bad], _ = _rerank_within(queries, cands, rows[g0:g1][bad], big, pairs_within, k, budget)
        out_d[g0:g1], out_i[g0:g1] = fd, fi
    return out_d, out_i
