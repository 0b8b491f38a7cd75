"""Windowed search (MSGNN's `index_neighbours` semantics) as a blocked local GEMM.

The query grid is cut into equal blocks (`derainkit.knn.geometry.plan_blocks`); each block reads the one
candidate rectangle that holds all of its queries' windows, a single dense GEMM gives every query ×
rectangle-candidate value, and the candidates outside a query's own window are set to +inf before the
shared exact selection (`derainkit.knn.select`). All blocks have the same shape, so the blocks of one
*step* (several blocks along a block row) go through one batched GEMM and one selection. The official m×o
window index tensor is never built.

Index bookkeeping. Batch items are flattened: query (t, i, j) -- item t, query-grid row i, column j -- is
row t·m + i·m2 + j of `q_flat` (b·m × e), and candidate (t, r, s) is row t·n + r·n2 + s of `x_flat`. A block
whose first query is at grid (row_start, col_start) and whose rectangle starts at candidate grid
(rect_row_start, rect_col_start) therefore reads
    query rows      t·m + (row_start + a)·m2 + col_start + c           a < block_rows, c < block_cols
    candidate rows  t·n + (rect_row_start + y)·n2 + rect_col_start + w  y < rect_rows, w < rect_cols.
The column part of both is the same for every block row, so it is built once per block column
(`_ColumnBlocks`) and each block row only adds row_start·m2 and rect_row_start·n2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from derainkit.knn.backends import gemm_form_batched, use_onednn
from derainkit.knn.geometry import BlockPlan, Window, block_starts, plan_blocks, window_origins, window_side
from derainkit.knn.select import GemmErrorBound, check_norms, exact_topk, gemm_unit_roundoff, smallest

__all__ = ["windowed_search", "WINDOW_STEP_BYTES_CPU"]

# Distance bytes per step on CPU (the blocks of a step share one batched GEMM and one masking and
# selection pass). On the project's 2-core AMD EPYC (Zen 3, AVX2), idle, steps of 8–64 MB ran equally
# fast; with other processes on the cores every parallel op waits for a descheduled thread, so fewer,
# larger steps are much faster, and 32 MB keeps memory modest. Speed only; CUDA uses the whole budget.
WINDOW_STEP_BYTES_CPU = 32 << 20


def windowed_search(q: Tensor, x: Tensor, k: int, query_grid: tuple[int, int], cand_grid: tuple[int, int],
                    window: Window, budget: int) -> tuple[Tensor, Tensor]:
    """Exact windowed kNN of q (b×m×e) among x (b×n×e), same float dtype, contiguous.

    Returns (δ b×m×k, candidate index b×m×k) sorted by (δ, index).
    """
    b = q.shape[0]
    side = window_side(window, cand_grid)
    if b > 1 and b * side * side * q.element_size() > budget:  # one query per item is over budget
        parts = [windowed_search(q[t:t + 1], x[t:t + 1], k, query_grid, cand_grid, window, budget)
                 for t in range(b)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _WindowedSearch(q, x, k, query_grid, cand_grid, window, budget).run()


def _outside_window(rect_pos: Tensor, origin: Tensor, side: int, dtype: torch.dtype) -> Tensor:
    """0 where rectangle position rect_pos lies in [origin, origin + side), +inf elsewhere (broadcast)."""
    return torch.where((rect_pos >= origin) & (rect_pos < origin + side), 0.0, math.inf).to(dtype)


@dataclass(frozen=True)
class _ColumnBlocks:
    """What every block column needs, for the block row at query-grid row 0 (see the module docstring)."""

    query_rows: Tensor  # b × count × block_queries: q_flat rows of each block's queries
    cand_rows: Tensor  # b × count × rect_size: x_flat rows of each block's rectangle
    outside: Tensor  # count × block_cols × rect_cols: 0/+inf, rectangle column outside a query column's window
    owned: Tensor  # count × block_cols: the block writes this query column (see geometry.block_starts)
    last_shifted: bool  # the last block column overlaps its neighbour
    count: int

    @classmethod
    def build(cls, col_origin: Tensor, plan: BlockPlan, side: int, query_grid: tuple[int, int],
              cand_grid: tuple[int, int], batch: int, dtype: torch.dtype) -> "_ColumnBlocks":
        dev = col_origin.device
        (m1, m2), (n1, n2) = query_grid, cand_grid
        i64 = dict(dtype=torch.int64, device=dev)
        starts, owned_from = block_starts(m2, plan.block_cols)
        col_start = torch.tensor(starts, dtype=torch.int64)
        in_block = torch.arange(plan.block_cols)
        owned = (col_start[:, None] + in_block >= torch.tensor(owned_from)[:, None]).to(dev)
        # the rectangle starts at the first query's window, moved left if it would cross the grid's edge
        rect_col_start = torch.minimum(col_origin.cpu()[col_start], torch.tensor(n2 - plan.rect_cols)).to(dev)
        col_start = col_start.to(dev)
        count = len(starts)
        item = torch.arange(batch, **i64).view(batch, 1, 1, 1)
        query_rows = (item * (m1 * m2) + torch.arange(plan.block_rows, **i64).view(1, 1, -1, 1) * m2
                      + col_start.view(1, count, 1, 1) + torch.arange(plan.block_cols, **i64).view(1, 1, 1, -1))
        cand_rows = (item * (n1 * n2) + torch.arange(plan.rect_rows, **i64).view(1, 1, -1, 1) * n2
                     + rect_col_start.view(1, count, 1, 1) + torch.arange(plan.rect_cols, **i64).view(1, 1, 1, -1))
        query_col_origin = col_origin[col_start.view(count, 1) + torch.arange(plan.block_cols, **i64)]
        rect_col = rect_col_start.view(count, 1) + torch.arange(plan.rect_cols, **i64)
        outside = _outside_window(rect_col[:, None, :], query_col_origin[:, :, None], side, dtype)
        return cls(query_rows.view(batch, count, plan.queries), cand_rows.view(batch, count, plan.rect_size),
                   outside, owned, starts[-1] != owned_from[-1], count)


class _BlockRow(NamedTuple):
    """One row of query blocks: its first query-grid row, the first row it owns, its rectangle's first
    candidate-grid row, and the block_rows × rect_rows 0/+inf window test along rows."""

    start: int
    owned_from: int
    rect_start: int
    outside: Tensor


class _WindowedSearch:
    """One windowed search (all batch items at once): set-up in __init__, block rows in `run`."""

    def __init__(self, q: Tensor, x: Tensor, k: int, query_grid: tuple[int, int], cand_grid: tuple[int, int],
                 window: Window, budget: int) -> None:
        b, m, e = q.shape
        self.k, self.budget, self.query_grid, self.cand_grid = k, budget, query_grid, cand_grid
        self.side = window_side(window, cand_grid)
        self.row_origin, col_origin = window_origins(query_grid, cand_grid, window, q.device)
        self.row_origin_cpu = self.row_origin.cpu()  # read as Python ints once per block row
        self.plan = plan_blocks(self.row_origin_cpu, col_origin.cpu(), self.side, cand_grid, b,
                                q.element_size(), budget)
        self.cols = _ColumnBlocks.build(col_origin, self.plan, self.side, query_grid, cand_grid, b, q.dtype)
        self.q_flat, self.x_flat = q.reshape(b * m, e), x.reshape(b * x.shape[1], e)
        self.qn, self.xn = (self.q_flat * self.q_flat).sum(-1), (self.x_flat * self.x_flat).sum(-1)
        check_norms(self.qn, self.xn)
        u_gemm = gemm_unit_roundoff(q.dtype, q.device)
        self.bound, self.xn_max = GemmErrorBound.for_gemm(e, u_gemm, q.dtype), self.xn.max()
        self.onednn = use_onednn(q, u_gemm)
        step_bytes = budget if q.device.type == "cuda" else min(budget, WINDOW_STEP_BYTES_CPU)
        block_bytes = b * self.plan.queries * self.plan.rect_size * q.element_size()
        self.blocks_per_step = max(1, min(self.cols.count, step_bytes // max(1, block_bytes)))
        self.batch, self.m, self.n = b, m, x.shape[1]

    def run(self) -> tuple[Tensor, Tensor]:
        b, m, k, dev = self.batch, self.m, self.k, self.q_flat.device
        out_d = torch.empty(b * m, k, dtype=self.q_flat.dtype, device=dev)
        out_i = torch.empty(b * m, k, dtype=torch.int64, device=dev)
        for row_start, owned_from in zip(*block_starts(self.query_grid[0], self.plan.block_rows)):
            block_row = self._block_row(row_start, owned_from)
            for j0 in range(0, self.cols.count, self.blocks_per_step):
                j1 = min(self.cols.count, j0 + self.blocks_per_step)
                rows, d, i = self._step(block_row, j0, j1)
                out_d.index_copy_(0, rows, d)  # unique rows: deterministic on every device
                out_i.index_copy_(0, rows, i)
        # x_flat rows -> candidate indices within each batch item
        out_i = out_i.view(b, m, k) - (torch.arange(b, dtype=torch.int64, device=dev) * self.n).view(b, 1, 1)
        return out_d.view(b, m, k), out_i

    def _block_row(self, row_start: int, owned_from: int) -> _BlockRow:
        p = self.plan
        rect_row_start = min(int(self.row_origin_cpu[row_start]), self.cand_grid[0] - p.rect_rows)
        # window test along rows: rectangle row y is inside query row a's window iff it lies within S of
        # that row's window origin, both counted from the rectangle's first row
        origin_in_rect = self.row_origin[row_start:row_start + p.block_rows, None] - rect_row_start
        rect_row = torch.arange(p.rect_rows, dtype=torch.int64, device=self.q_flat.device)
        outside = _outside_window(rect_row[None, :], origin_in_rect, self.side, self.q_flat.dtype)
        return _BlockRow(row_start, owned_from, rect_row_start, outside)

    def _step(self, row: _BlockRow, j0: int, j1: int) -> tuple[Tensor, Tensor, Tensor]:
        """Blocks j0..j1−1 of one block row: the q_flat rows they own and their exact (δ, x_flat row)."""
        p, cols, b, g = self.plan, self.cols, self.batch, j1 - j0
        e = self.q_flat.shape[1]
        query_rows = (cols.query_rows[:, j0:j1] + row.start * self.query_grid[1]).reshape(-1)
        cand_rows = (cols.cand_rows[:, j0:j1] + row.rect_start * self.cand_grid[1]).reshape(b * g, p.rect_size)
        queries = self.q_flat.index_select(0, query_rows).view(b * g, p.queries, e)
        rect = self.x_flat.index_select(0, cand_rows.view(-1)).view(b * g, p.rect_size, e)
        rect_norms = self.xn.index_select(0, cand_rows.view(-1)).view(b * g, p.rect_size)
        gvals = gemm_form_batched(queries, rect, rect_norms, self.onednn)  # (b·g) × block_queries × rect_size
        by_axis = gvals.view(b, g, p.block_rows, p.block_cols, p.rect_rows, p.rect_cols)
        by_axis.add_(row.outside.view(1, 1, p.block_rows, 1, p.rect_rows, 1))
        by_axis.add_(cols.outside[j0:j1].view(1, g, 1, p.block_cols, 1, p.rect_cols))
        qn = self.qn.index_select(0, query_rows)
        d, i = _select_in_rectangles(gvals.view(-1, p.rect_size), cand_rows, queries.view(-1, e), qn,
                                     self.bound.tol(qn, self.xn_max), self.x_flat, self.k, p.queries,
                                     self.budget)
        if row.start != row.owned_from or (j1 == cols.count and cols.last_shifted):  # holds a shifted block
            row_owned = torch.arange(row.start, row.start + p.block_rows, device=d.device) >= row.owned_from
            keep = (row_owned.view(1, 1, -1, 1) & cols.owned[j0:j1].view(1, g, 1, -1))
            keep = keep.expand(b, g, p.block_rows, p.block_cols).reshape(-1)
            query_rows, d, i = query_rows[keep], d[keep], i[keep]
        return query_rows, d, i


def _select_in_rectangles(gvals: Tensor, cand_rows: Tensor, queries: Tensor, qn: Tensor, tol: Tensor,
                          x_flat: Tensor, k: int, block_queries: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact top-k of each query row of gvals (R × rect_size, +inf outside its window).

    Column w of row r is candidate row cand_rows[r // block_queries, w] of x_flat: every block of
    block_queries consecutive rows shares one rectangle.
    """
    nrows, rect_size = gvals.shape
    nblocks = cand_rows.shape[0]
    count = min(k + 1, rect_size)
    v, col = smallest(gvals, count)
    per_query = cand_rows.view(nblocks, 1, rect_size).expand(nblocks, block_queries, rect_size)
    winners = torch.gather(per_query, 2, col[:, :k].reshape(nblocks, block_queries, k)).view(nrows, k)

    def pairs_within(rows: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
        pos, w = (gvals.index_select(0, rows) <= thr[:, None]).nonzero(as_tuple=True)
        return pos, cand_rows[rows[pos] // block_queries, w]

    next_value = v[:, k] if count > k else None
    return exact_topk(queries, qn, tol, x_flat, winners, next_value, pairs_within, rect_size, budget)
