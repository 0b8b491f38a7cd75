"""Exact global and windowed patch kNN (derainkit.knn.search) against a float64 brute-force reference."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from derainkit.errors import DerainkitError
from derainkit.knn import Window, knn, knn_reference_fp64, window_index, window_origins
from derainkit.knn.search import _faiss_available

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "msgnn"


def _assert_same_neighbours(d, i, dr, ir, rtol=1e-4):
    assert d.dtype == torch.float32 and i.dtype == torch.int64
    assert d.shape == dr.shape and i.shape == ir.shape
    assert torch.equal(i.sort(-1).values, ir.sort(-1).values), "neighbour sets differ"
    torch.testing.assert_close(d.double(), dr, rtol=rtol, atol=1e-6)
    assert (d[..., 1:] >= d[..., :-1]).all(), "distances not ascending"


def _official_window_sets(qg, cg, size, scale):
    """The official index_neighbours formula, written as a plain loop."""
    m1, m2 = qg
    n1, n2 = cg
    S = min(size, n1, n2)
    out = []
    for i in range(m1):
        for j in range(m2):
            ch = min(max(i // 2 - S // scale, 0), n1 - S)
            cw = min(max(j // 2 - S // scale, 0), n2 - S)
            out.append(sorted(ch * n2 + cw + a + bb * n2 for a in range(S) for bb in range(S)))
    return out


# (b, query grid, cand grid, window, e)
CASES = [
    (2, (9, 11), (9, 11), None, 12),
    (1, (20, 7), (5, 13), None, 27),
    (2, (22, 22), (22, 22), Window(30, "msgnn", 1), 18),  # window larger than the grid: global
    (2, (40, 50), (40, 50), Window(30, "msgnn", 1), 9),  # the eval-fixture scale-1 geometry
    (1, (40, 50), (20, 25), Window(30, "msgnn", 2), 9),  # ½ branch: S=20, slides horizontally
    (2, (40, 50), (10, 13), Window(30, "msgnn", 4), 9),  # ¼ branch: S=10
    (1, (40, 50), (34, 47), Window(30, "msgnn", 1), 9),  # exemplar grid of another size
    (2, (30, 33), (25, 40), Window(8, "msgnn", 2), 10),  # real sliding window in both directions
    (1, (26, 31), (13, 16), Window(6, "msgnn", 2), 10),
    (1, (26, 31), (7, 8), Window(5, "msgnn", 4), 10),
    (2, (17, 19), (34, 47), Window(7, "centered", 1), 10),  # candidate grid larger than the query grid
    (1, (24, 30), (12, 15), Window(5, "centered", 1), 10),  # smaller candidate grid
    (1, (15, 40), (9, 30), Window(12, "centered", 1), 10),  # S = n1 = 9 < size < n2
    (1, (15, 40), (9, 30), Window(12, "msgnn", 2), 10),
]


@pytest.mark.parametrize("b,qg,cg,window,e", CASES)
def test_knn_matches_fp64_reference(b, qg, cg, window, e):
    torch.manual_seed(qg[0] * 7 + cg[1])
    q = torch.randn(b, qg[0] * qg[1], e)
    x = torch.randn(b, cg[0] * cg[1], e)
    d, i = knn(q, x, 5, query_grid=qg, cand_grid=cg, window=window)
    dr, ir = knn_reference_fp64(q, x, 5, query_grid=qg, cand_grid=cg, window=window)
    _assert_same_neighbours(d, i, dr, ir)
    if window is not None:  # every neighbour lies inside its query's window
        I = window_index(qg, cg, window)
        inside = (I[None, :, :, None] == i[:, :, None, :]).any(2)
        assert inside.all()
    # a small budget forces small query blocks / candidate chunks: same result, bit for bit
    d2, i2 = knn(q, x, 5, query_grid=qg, cand_grid=cg, window=window, memory_budget=48_000)
    assert torch.equal(i2, i) and torch.equal(d2, d)


@pytest.mark.parametrize("window", [None, Window(5, "msgnn", 2), Window(4, "centered", 1)])
def test_tiny_budget_single_query_blocks(window):
    torch.manual_seed(6)
    q, x = torch.randn(2, 7 * 9, 10), torch.randn(2, 8 * 6, 10)
    kw = dict(query_grid=(7, 9), cand_grid=(8, 6), window=window)
    d, i = knn(q, x, 5, **kw)
    d2, i2 = knn(q, x, 5, memory_budget=64, **kw)  # below one row of distances
    assert torch.equal(i2, i) and torch.equal(d2, d)
    _assert_same_neighbours(d, i, *knn_reference_fp64(q, x, 5, **kw))


@pytest.mark.parametrize("qg,cg,size,scale", [((40, 50), (40, 50), 30, 1), ((40, 50), (20, 25), 30, 2),
                                              ((40, 50), (10, 13), 30, 4), ((40, 50), (34, 47), 30, 1),
                                              ((13, 21), (9, 30), 12, 2), ((8, 8), (30, 30), 5, 1)])
def test_msgnn_window_equals_official_formula(qg, cg, size, scale):
    I = window_index(qg, cg, Window(size, "msgnn", scale))
    assert I.tolist() == _official_window_sets(qg, cg, size, scale)


def test_centered_window_rule():
    rows, cols = window_origins((10, 40), (20, 20), Window(6, "centered"))
    # row i maps to round(2i): origin 2i - 3 clamped to [0, 14]
    assert rows.tolist() == [min(max(2 * i - 3, 0), 14) for i in range(10)]
    # col j maps to round(j/2), half to even: 0,0,1,2,2,2,3,4,4,4,5,...
    assert cols[:11].tolist() == [max(round(j / 2) - 3, 0) for j in range(11)]
    assert cols.tolist() == [min(max(round(j * 20 / 40) - 3, 0), 14) for j in range(40)]


def test_fixture_windows_match_readme():
    """README: at 120×150 the scale-1 and exemplar windows are the top-left 30×30 block for every query,
    and the ½, ¼ windows slide only horizontally."""
    qg = (40, 50)
    for cg, scale in (((40, 50), 1), ((34, 47), 1)):
        rows, cols = window_origins(qg, cg, Window(30, "msgnn", scale))
        assert (rows == 0).all() and (cols == 0).all()
    for cg, scale in (((20, 25), 2), ((10, 13), 4)):
        rows, cols = window_origins(qg, cg, Window(30, "msgnn", scale))
        assert (rows == 0).all() and cols.unique().numel() > 1


@pytest.mark.shared
def test_official_fixture_neighbours_lie_in_our_windows():
    path = FIXTURES / "eval_mode_120x150.pt"
    if not path.exists():
        pytest.skip(f"{path} not available")
    fx = torch.load(path, weights_only=True)
    qg = (40, 50)
    for name, cg, scale in (("1", (40, 50), 1), ("2", (20, 25), 2), ("4", (10, 13), 4), ("guide", (34, 47), 1)):
        idx = fx[f"idx_{name}"]
        assert idx.shape == (1, 2000, 5)
        I = window_index(qg, cg, Window(30, "msgnn", scale))
        assert (I[None, :, :, None] == idx[:, :, None, :]).any(2).all(), name
        # and they are not confined to any smaller window: the union of neighbours spans our windows
        assert idx.max() < cg[0] * cg[1]


def test_global_chunking_and_candidate_chunking_identical():
    torch.manual_seed(1)
    q = torch.randn(1, 300, 16)
    x = torch.randn(1, 500, 16)
    d, i = knn(q, x, 7)
    for budget in (64, 1000, 20000):  # 64 B < one row of distances: candidate chunks of 16
        d2, i2 = knn(q, x, 7, memory_budget=budget)
        assert torch.equal(i2, i) and torch.equal(d2, d)
    dr, ir = knn_reference_fp64(q, x, 7)
    _assert_same_neighbours(d, i, dr, ir)


@pytest.mark.parametrize("window", [None, Window(4, "msgnn", 1), Window(5, "centered", 1)])
def test_ties_broken_by_lower_index(window):
    torch.manual_seed(2)
    # 12 distinct vectors, each repeated 6 times along the candidate grid: exact distance ties everywhere
    base = torch.randn(12, 8)
    x = base.repeat(6, 1)[None]  # candidate p equals base[p % 12]
    q = torch.randn(1, 8 * 9, 8)
    d, i = knn(q, x, 5, query_grid=(8, 9), cand_grid=(8, 9), window=window)
    dr, ir = knn_reference_fp64(q, x, 5, query_grid=(8, 9), cand_grid=(8, 9), window=window)
    assert torch.equal(i, ir)  # the reference sorts stably: the lower index wins every tie
    if window is None:
        # the best base vector's copies come first, in index order
        assert (i[0, :, 1] - i[0, :, 0] == 12).all()
    d2, i2 = knn(q, x, 5, query_grid=(8, 9), cand_grid=(8, 9), window=window, memory_budget=256)
    assert torch.equal(i2, i) and torch.equal(d2, d)


@pytest.mark.parametrize("window", [None, Window(3, "msgnn", 1), Window(4, "centered", 1)])
def test_all_equal_inputs(window):
    q = torch.zeros(1, 36, 4)
    x = torch.ones(1, 36, 4)
    d, i = knn(q, x, 5, query_grid=(6, 6), cand_grid=(6, 6), window=window)
    dr, ir = knn_reference_fp64(q, x, 5, query_grid=(6, 6), cand_grid=(6, 6), window=window)
    assert torch.equal(i, ir)
    assert (d == 4).all()
    if window is None:
        assert (i == torch.arange(5)).all()


def test_eps_shifts_distances_only():
    torch.manual_seed(3)
    q, x = torch.randn(2, 60, 9), torch.randn(2, 70, 9)
    d, i = knn(q, x, 5, query_grid=(6, 10), cand_grid=(7, 10), window=Window(4))
    d2, i2 = knn(q, x, 5, query_grid=(6, 10), cand_grid=(7, 10), window=Window(4), eps=1e-5)
    assert torch.equal(i, i2)
    torch.testing.assert_close(d2, d + 1e-5)


def test_dtypes_and_determinism():
    torch.manual_seed(4)
    q, x = torch.randn(1, 50, 9, dtype=torch.float64), torch.randn(1, 40, 9, dtype=torch.float64)
    d, i = knn(q, x, 3)
    dr, ir = knn_reference_fp64(q, x, 3)
    assert d.dtype == torch.float32 and torch.equal(i, ir)
    d16, i16 = knn(q.half(), x.half(), 3)
    assert d16.dtype == torch.float32 and i16.shape == (1, 50, 3)
    a = knn(q.float(), x.float(), 3, window=Window(3, "centered"), query_grid=(5, 10), cand_grid=(5, 8))
    b = knn(q.float(), x.float(), 3, window=Window(3, "centered"), query_grid=(5, 10), cand_grid=(5, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.skipif(not _faiss_available(), reason="faiss not installed")
def test_faiss_backend_identical_to_torch():
    torch.manual_seed(5)
    q, x = torch.randn(2, 400, 36), torch.randn(2, 700, 36)
    d, i = knn(q, x, 5, backend="torch")
    d2, i2 = knn(q, x, 5, backend="faiss")
    assert torch.equal(i, i2) and torch.equal(d, d2)
    # with duplicates (exact ties straddling faiss' shortlist) it still agrees
    xd = x[:, :50].repeat(1, 8, 1)
    d, i = knn(q, xd, 5, backend="torch")
    d2, i2 = knn(q, xd, 5, backend="faiss")
    assert torch.equal(i, i2) and torch.equal(d, d2)
    with pytest.raises(DerainkitError, match="global"):
        knn(q, x, 5, backend="faiss", window=Window(3), query_grid=(20, 20), cand_grid=(28, 25))


def test_bad_input_errors():
    q, x = torch.randn(1, 12, 9), torch.randn(1, 20, 9)
    with pytest.raises(DerainkitError, match="patch lengths differ"):
        knn(q, torch.randn(1, 20, 8), 3)
    with pytest.raises(DerainkitError, match="batch sizes differ"):
        knn(q, torch.randn(2, 20, 9), 3)
    with pytest.raises(DerainkitError, match="b×n×e"):
        knn(q[0], x, 3)
    with pytest.raises(DerainkitError, match="cand_grid"):
        knn(q, x, 3, query_grid=(3, 4), cand_grid=(4, 4), window=Window(2))
    with pytest.raises(DerainkitError, match="query_grid"):
        knn(q, x, 3, query_grid=(5, 4), cand_grid=(4, 5), window=Window(2))
    with pytest.raises(DerainkitError, match="needs query_grid"):
        knn(q, x, 3, window=Window(2))
    with pytest.raises(DerainkitError, match="exceeds"):
        knn(q, x, 21)
    with pytest.raises(DerainkitError, match="exceeds"):
        knn(q, x, 5, query_grid=(3, 4), cand_grid=(4, 5), window=Window(2))
    with pytest.raises(DerainkitError, match="k must be"):
        knn(q, x, 0)
    with pytest.raises(DerainkitError, match="backend"):
        knn(q, x, 3, backend="cuda")
    with pytest.raises(DerainkitError, match="triton"):
        knn(q, x, 3, backend="triton")
    with pytest.raises(DerainkitError, match="NaN"):
        knn(q * float("nan"), x, 3)
    with pytest.raises(DerainkitError, match="floating"):
        knn(q.long(), x.long(), 3)
    with pytest.raises(DerainkitError, match="memory_budget"):
        knn(q, x, 3, memory_budget=0)
    with pytest.raises(DerainkitError, match="rule"):
        Window(30, "centred")
    with pytest.raises(DerainkitError, match="scale"):
        Window(30, "msgnn", 0)


def test_two_stage_selection_on_long_rows_with_ties():
    # n >= 16 groups × 8·(k+1) columns: the CPU group-minimum selection is used; duplicates create exact
    # ties inside and across groups
    torch.manual_seed(7)
    base = torch.randn(1, 300, 12)
    x = torch.cat([base, base[:, :150], base[:, 100:250], base[:, :37]], 1)  # n = 937, many duplicates
    q = torch.randn(1, 80, 12)
    d, i = knn(q, x, 6)
    dr, ir = knn_reference_fp64(q, x, 6)
    assert torch.equal(i, ir)
    torch.testing.assert_close(d.double(), dr, rtol=1e-5, atol=1e-6)


def test_gemm_backend_does_not_change_results(monkeypatch):
    """oneDNN (when probed ok) and torch.mm GEMMs only build the shortlist: results are bit-identical."""
    from derainkit.knn import backends

    torch.manual_seed(8)
    q, x = torch.randn(2, 40 * 50, 16), torch.randn(2, 20 * 25, 16)
    kw = dict(query_grid=(40, 50), cand_grid=(20, 25))
    runs = []
    for probe in (backends.onednn_linear_ok, lambda: False):
        monkeypatch.setattr(backends, "onednn_linear_ok", probe)
        runs.append((knn(q, x, 5, window=Window(30, "msgnn", 2), **kw), knn(q, x, 5)))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_reduced_matmul_precision_stays_exact():
    torch.manual_seed(9)
    q, x = torch.randn(1, 12 * 10, 20), torch.randn(1, 9 * 11, 20)
    kw = dict(query_grid=(12, 10), cand_grid=(9, 11))
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.warns(RuntimeWarning, match="reduced-precision"):
            d, i = knn(q, x, 5, window=Window(6, "centered"), **kw)
    finally:
        torch.set_float32_matmul_precision(old)
    _assert_same_neighbours(d, i, *knn_reference_fp64(q, x, 5, window=Window(6, "centered"), **kw))


@pytest.mark.parametrize("window", [None, Window(3, "msgnn", 1)])
def test_non_finite_inputs_rejected(window):
    q, x = torch.randn(1, 16, 9), torch.randn(1, 16, 9)
    kw = dict(query_grid=(4, 4), cand_grid=(4, 4), window=window)
    xi = x.clone()
    xi[0, 5, 2] = float("inf")
    with pytest.raises(DerainkitError, match="cand contains NaN or inf"):
        knn(q, xi, 3, **kw)
    qn = q.clone()
    qn[0, 0, 0] = float("nan")
    with pytest.raises(DerainkitError, match="query contains NaN or inf"):
        knn(qn, x, 3, **kw)
