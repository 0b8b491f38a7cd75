"""Window geometry of the windowed search: where each query's window lies, and how queries are blocked.

Patches live on grids: query p = i·m2 + j sits at row i, column j of the m1×m2 query grid, candidate
c = r·n2 + s at row r, column s of the n1×n2 candidate grid. A query's window is the S×S square of
candidate rows [row_origin[i], row_origin[i] + S) × columns [col_origin[j], col_origin[j] + S).

The windowed search does not visit queries one by one: it cuts the query grid into equal blocks of
block_rows × block_cols queries, and each block reads one rect_rows × rect_cols rectangle of candidates
that holds every window of its queries (`BlockPlan`, `plan_blocks`, `block_starts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from derainkit.knn.errors import KnnError

__all__ = ["Window", "WINDOW_RULES", "window_side", "window_origins", "window_index", "BlockPlan",
           "plan_blocks", "block_starts"]

WINDOW_RULES = ("msgnn", "centered")


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
        if self.rule not in WINDOW_RULES:
            raise KnnError(f"Window.rule must be one of {WINDOW_RULES}, got {self.rule!r}")
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise KnnError(f"Window.scale must be a positive int, got {self.scale!r}")


def window_side(window: Window, cand_grid: tuple[int, int]) -> int:
    """Effective window side S = min(size, n1, n2)."""
    return min(window.size, cand_grid[0], cand_grid[1])


def _origins_1d(n_query: int, n_cand: int, side: int, window: Window, device: torch.device) -> Tensor:
    """Window origin along one axis for each of the n_query query positions (candidate grid of n_cand)."""
    pos = torch.arange(n_query, device=device, dtype=torch.int64)
    if window.rule == "msgnn":
        start = pos // 2 - side // window.scale
    else:  # centered: round(pos·n_cand/n_query) half to even, in exact integer arithmetic
        num = pos * n_cand
        quot, rem = num // n_query, num % n_query
        up = (2 * rem > n_query) | ((2 * rem == n_query) & (quot % 2 == 1))
        start = quot + up.to(torch.int64) - side // 2
    return start.clamp(0, n_cand - side)


def window_origins(query_grid: tuple[int, int], cand_grid: tuple[int, int], window: Window,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per-query-row and per-query-column window origins (int64 tensors of length m1 and m2).

    Query (i, j) searches candidate rows [rows[i], rows[i]+S) × cols [cols[j], cols[j]+S).
    Both are non-decreasing in i (j), which is what the blocked search relies on.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    side = window_side(window, cand_grid)
    return (_origins_1d(query_grid[0], cand_grid[0], side, window, device),
            _origins_1d(query_grid[1], cand_grid[1], side, window, device))


def window_index(query_grid: tuple[int, int], cand_grid: tuple[int, int], window: Window,
                 device: torch.device | str | None = None) -> Tensor:
    """The official m×o window index tensor I (int64), candidates of each row in ascending index order.

    Memory-heavy (8·m·o bytes): meant for tests and the gather baseline, not used by `knn`. The official
    code lists the same set in a different order (column offset outer); the set is what matters.
    """
    row_origin, col_origin = window_origins(query_grid, cand_grid, window, device)
    side = window_side(window, cand_grid)
    n2 = cand_grid[1]
    offset = torch.arange(side, device=row_origin.device, dtype=torch.int64)
    cand_row_base = (row_origin[:, None] + offset[None, :]) * n2  # m1 × S: first candidate of each window row
    cand_col = col_origin[:, None] + offset[None, :]  # m2 × S
    idx = cand_row_base[:, None, :, None] + cand_col[None, :, None, :]  # m1 × m2 × S × S
    return idx.reshape(query_grid[0] * query_grid[1], side * side)


# ----------------------------------------------------------------------------------------------------------
# block plan of the windowed search
#
# The cost model below only chooses block shapes: every plan gives the same results, bit for bit (each
# query's exact distances and selection do not depend on its block; tested with tiny budgets). Its
# constants were fitted when the plan was written (commits bf4543a, acfb2ac) by timing MSGNN-like
# searches (30×30 windows, e = 288, k = 5, 256²–1024² feature maps, bench/bench_knn_windowed.py) on the
# project's 2-core AMD EPYC KVM guest (family 25 / Zen 3, AVX2, 2 torch threads), idle and with other
# processes on the cores. On other CPUs or on CUDA they may choose slower blocks, never wrong ones.

# Candidate block sides tried along each grid axis (queries per block row/column).
BLOCK_SIDES = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48)
# A GEMM with nq query rows runs at about 1/(1 + SMALL_GEMM_ROWS/nq) of peak speed: with few rows each
# candidate loaded from memory serves few dot products.
SMALL_GEMM_ROWS = 40.0
# Fixed cost of one query block, in distance entries: its GEMM call plus its share of the step's masking
# and selection ops. With 2e5, 512² MSGNN windows get 24×24 blocks: ~10 % more distance entries than the
# idle-machine optimum (16×20) and ~1.5× faster when other processes share the cores (every parallel op
# then waits for a descheduled thread, so fewer, larger blocks win).
BLOCK_OVERHEAD = 200000.0


@dataclass(frozen=True)
class BlockPlan:
    """Every query block has block_rows × block_cols queries and reads rect_rows × rect_cols candidates."""

    block_rows: int
    block_cols: int
    rect_rows: int
    rect_cols: int

    @property
    def queries(self) -> int:
        return self.block_rows * self.block_cols

    @property
    def rect_size(self) -> int:
        return self.rect_rows * self.rect_cols


def _origin_spread(origins: Tensor, count: int) -> int:
    """Largest origins[i+count-1] − origins[i]: how far the window moves across `count` consecutive queries."""
    if count >= origins.numel():
        return int(origins[-1] - origins[0])
    return int((origins[count - 1:] - origins[: origins.numel() - count + 1]).max())


def plan_blocks(row_origin: Tensor, col_origin: Tensor, side: int, cand_grid: tuple[int, int], batch: int,
                elem_bytes: int, budget: int) -> BlockPlan:
    """The block shape of least modelled cost per query whose distance block fits `budget` bytes.

    The rectangle covers the windows of any block_rows consecutive query rows (and block_cols columns)
    because origins are non-decreasing: S plus the largest spread of the origins across a block. Cost per
    query: rect_size distance entries, slowed by small GEMMs, plus the fixed per-block cost. The smallest
    shape is always admitted, so there is a plan even when nothing fits the budget.
    """
    m1, m2 = row_origin.numel(), col_origin.numel()
    n1, n2 = cand_grid
    best, best_cost = None, math.inf
    for block_rows in sorted({min(s, m1) for s in BLOCK_SIDES}):
        rect_rows = min(n1, side + _origin_spread(row_origin, block_rows))
        for block_cols in sorted({min(s, m2) for s in BLOCK_SIDES}):
            rect_cols = min(n2, side + _origin_spread(col_origin, block_cols))
            nq = block_rows * block_cols
            if batch * nq * rect_rows * rect_cols * elem_bytes > budget and best is not None:
                continue
            cost = rect_rows * rect_cols * (1.0 + SMALL_GEMM_ROWS / nq) + BLOCK_OVERHEAD / nq
            if cost < best_cost:
                best, best_cost = BlockPlan(block_rows, block_cols, rect_rows, rect_cols), cost
    return best


def block_starts(length: int, block: int) -> tuple[list[int], list[int]]:
    """First query of each block along an axis of `length` queries, and the first query it owns.

    Blocks start at multiples of `block`; the last one is moved back to end at the edge so that every
    block has the same shape. It then overlaps its neighbour: its queries before the owned start were
    already computed by that neighbour and must not be written twice.
    """
    owned = list(range(0, length, block))
    return [min(o, length - block) for o in owned], owned
