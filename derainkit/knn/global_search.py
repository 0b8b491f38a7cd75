"""Global search: every candidate of a batch item is a possible neighbour of each of its queries.

Shortlist in GEMM form (see `derainkit.knn.select`), then the shared exact selection:
- query blocks: blocks of query rows × all candidates, each block's GEMM followed by its selection;
- candidate chunks: when one row of distances alone exceeds the memory budget, each query runs over the
  candidates chunk by chunk, keeping the k+1 smallest so far;
- faiss: faiss' brute-force k+1 nearest (global, CPU only).
All three end in `exact_topk`, and the near-tie fallback of all three recomputes GEMM values in candidate
chunks (`_recomputed_pairs`), so their results are identical.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from derainkit.knn.backends import faiss_shortlist, gemm_form, gemm_form_rows, use_onednn
from derainkit.knn.select import (GemmErrorBound, PairsWithin, check_norms, exact_topk, gemm_unit_roundoff,
                                  lexsort_rows, smallest)

__all__ = ["global_search", "GLOBAL_BLOCK_BYTES_CPU"]

# Distance bytes per query block on CPU. A block of this size stays in the last-level cache between the
# GEMM that writes it and the selection that reads it: on the project's 2-core AMD EPYC (Zen 3, AVX2)
# 256-row blocks at n = 16384 candidates (16 MB of float32) were the fastest. Smaller or larger blocks
# change the speed only; CUDA uses the whole budget.
GLOBAL_BLOCK_BYTES_CPU = 16 << 20


def global_search(q: Tensor, x: Tensor, k: int, budget: int, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Exact global kNN of q (b×m×e) among x (b×n×e), same float dtype: (δ b×m×k, candidate index b×m×k)."""
    item = _faiss_item if backend == "faiss" else _torch_item
    parts = [item(q[t], x[t], k, budget) for t in range(q.shape[0])]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def _recomputed_pairs(q: Tensor, x: Tensor, xn: Tensor, budget: int) -> PairsWithin:
    """The fallback's pair source for a global search: GEMM values recomputed in candidate chunks."""
    n = x.shape[0]

    def pairs_within(rows: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
        qf = q.index_select(0, rows)
        chunk = max(1, min(n, budget // (q.element_size() * rows.numel())))
        pos_l, cand_l = [], []
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            pos, col = (gemm_form(qf, x[c0:c1], xn[c0:c1]) <= thr[:, None]).nonzero(as_tuple=True)
            pos_l.append(pos)
            cand_l.append(col + c0)
        return torch.cat(pos_l), torch.cat(cand_l)

    return pairs_within


def _torch_item(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """One batch item: q m×e, x n×e."""
    m, e = q.shape
    n = x.shape[0]
    el = q.element_size()
    xn = (x * x).sum(-1)
    qn = (q * q).sum(-1)
    check_norms(qn, xn)
    u_gemm = gemm_unit_roundoff(q.dtype, q.device)
    tol = GemmErrorBound.for_gemm(e, u_gemm, q.dtype).tol(qn, xn.max())
    if n * el > budget:  # a single row of distances is over budget
        winners, next_value = _shortlist_by_cand_chunks(q, x, xn, k, budget)
        rerank_step = max(1, budget // (k * e * el))
    else:
        block = budget if q.device.type == "cuda" else min(budget, GLOBAL_BLOCK_BYTES_CPU)
        rows = max(1, min(m, block // (n * el)))
        winners, next_value = _shortlist_by_query_blocks(q, x, xn, k, rows, use_onednn(q, u_gemm))
        rerank_step = max(1, block // (k * e * el))  # gathered winners: one block's worth of memory
    return exact_topk(q, qn, tol, x, winners, next_value, _recomputed_pairs(q, x, xn, budget), n, budget,
                      rerank_step=rerank_step)


def _shortlist_by_query_blocks(q: Tensor, x: Tensor, xn: Tensor, k: int, rows: int, onednn: bool
                               ) -> tuple[Tensor, Tensor | None]:
    """Winners (m×k) and (k+1)-th GEMM value (m, None if n == k), `rows` queries per GEMM block."""
    m, n = q.shape[0], x.shape[0]
    count = min(n, k + 1)
    gemm = gemm_form_rows(q, x, xn, onednn, rows)
    winners = torch.empty(m, k, dtype=torch.int64, device=q.device)
    next_value = torch.full((m,), math.inf, dtype=q.dtype, device=q.device)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        v, cols = smallest(gemm(r0, r1), count)
        winners[r0:r1] = cols[:, :k]
        if count > k:
            next_value[r0:r1] = v[:, k]
    return winners, (next_value if count > k else None)


def _shortlist_by_cand_chunks(q: Tensor, x: Tensor, xn: Tensor, k: int, budget: int
                              ) -> tuple[Tensor, Tensor | None]:
    """As `_shortlist_by_query_blocks`, one query at a time over candidate chunks of `budget` bytes."""
    m, n = q.shape[0], x.shape[0]
    chunk = max(1, budget // q.element_size())
    count = min(n, k + 1)
    winners = torch.empty(m, k, dtype=torch.int64, device=q.device)
    next_value = torch.full((m,), math.inf, dtype=q.dtype, device=q.device)
    for r in range(m):
        best_v = best_i = None
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            v, i = torch.topk(gemm_form(q[r:r + 1], x[c0:c1], xn[c0:c1]), min(count, c1 - c0), dim=1,
                              largest=False)
            i = i + c0
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            v, i = lexsort_rows(v, i)  # among equal values the lower index stays
            best_v, best_i = v[:, :count], i[:, :count]
        winners[r] = best_i[0, :k]
        if count > k:
            next_value[r] = best_v[0, k]
    return winners, (next_value if count > k else None)


def _faiss_item(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """One batch item through faiss' shortlist, then the same exact selection as the torch path."""
    m, e = q.shape
    n = x.shape[0]
    xn = (x * x).sum(-1)
    qn = (q * q).sum(-1)
    check_norms(qn, xn)  # before faiss sees the data
    count = min(n, k + 1)
    values, cols = faiss_shortlist(q, x, count)
    tol = GemmErrorBound.for_gemm(e, 2.0 ** -24, q.dtype).tol(qn, xn.max())  # faiss works in fp32
    # faiss' values are ‖q‖² + g: take ‖q‖² off so the completeness rule reads as on every other path
    # (two more roundings, far inside the bound, whose faiss term covers faiss' own ‖q‖²)
    next_value = values[:, k] - qn if count > k else None
    return exact_topk(q, qn, tol, x, cols[:, :k].contiguous(), next_value, _recomputed_pairs(q, x, xn, budget),
                      n, budget)
