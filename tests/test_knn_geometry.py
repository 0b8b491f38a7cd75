"""Query blocks of the windowed search (derainkit.knn.geometry): every block's candidate rectangle holds
all of its queries' windows, and every query is written by exactly one block."""
from __future__ import annotations

import pytest
import torch

from derainkit.knn import Window, window_origins, window_side
from derainkit.knn.geometry import block_starts, plan_blocks


@pytest.mark.parametrize("length,block", [(10, 3), (9, 3), (5, 8), (1, 1), (48, 48), (50, 24)])
def test_block_starts_cover_each_query_once(length, block):
    starts, owned = block_starts(length, min(block, length))
    block = min(block, length)
    writers = torch.zeros(length, dtype=torch.int64)
    for s, o in zip(starts, owned):
        assert 0 <= s <= o and s + block <= length  # every block has the full size, inside the grid
        writers[o:s + block] += 1
    assert (writers == 1).all()


@pytest.mark.parametrize("qg,cg,window", [((40, 50), (20, 25), Window(30, "msgnn", 2)),
                                          ((30, 33), (25, 40), Window(8, "msgnn", 2)),
                                          ((17, 19), (34, 47), Window(7, "centered", 1)),
                                          ((64, 64), (32, 32), Window(9, "centered", 1))])
@pytest.mark.parametrize("budget", [64, 20_000, 1 << 24])
def test_rectangles_hold_every_window_of_their_block(qg, cg, window, budget):
    rows, cols = window_origins(qg, cg, window)
    side = window_side(window, cg)
    plan = plan_blocks(rows, cols, side, cg, 1, 4, budget)
    assert plan.queries * plan.rect_size * 4 <= budget or (plan.block_rows, plan.block_cols) == (1, 1)
    for origins, m_len, n_len, blk, rect in ((rows, qg[0], cg[0], plan.block_rows, plan.rect_rows),
                                             (cols, qg[1], cg[1], plan.block_cols, plan.rect_cols)):
        for s in block_starts(m_len, blk)[0]:
            rect_start = min(int(origins[s]), n_len - rect)  # as the windowed search places it
            block_origins = origins[s:s + blk]
            assert rect_start >= 0 and rect_start + rect <= n_len
            assert (block_origins >= rect_start).all() and (block_origins + side <= rect_start + rect).all()
