"""Exact selection (derainkit.knn.select), written once and used by every search path: the completeness
check and its fallback are exercised on every path, and results equal the float64 brute force."""
from __future__ import annotations

import pytest
import torch

from derainkit.knn import Window, knn, knn_reference_fp64
from derainkit.knn import select
from derainkit.knn.backends import faiss_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ints(seed, shape, levels=3, dtype=torch.float32):
    """Small integers: every distance is exact in float32, and exact ties are everywhere."""
    return torch.randint(0, levels, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture
def fallback_calls(monkeypatch):
    """Count the queries that went through `exact_fallback`."""
    calls = []
    real = select.exact_fallback

    def counting(queries, cands, rows, *args, **kwargs):
        calls.append(rows.numel())
        return real(queries, cands, rows, *args, **kwargs)

    monkeypatch.setattr(select, "exact_fallback", counting)
    return calls


GLOBAL = [  # (backend, memory budget): query blocks, candidate chunks, faiss
    ("torch", None), ("torch", 4000), ("torch", 64),
    pytest.param("faiss", None, marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")),
]


@pytest.mark.parametrize("backend,budget", GLOBAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_ties_equal_reference_through_the_fallback(backend, budget, dtype, fallback_calls):
    q, x = _ints(0, (2, 70, 6), dtype=dtype), _ints(1, (2, 300, 6), dtype=dtype)
    d, i = knn(q, x, 5, backend=backend, memory_budget=budget)
    dr, ir = knn_reference_fp64(q, x, 5)
    assert torch.equal(i, ir)  # the lower index wins every tie, as in the stable-sorted reference
    assert torch.equal(d.double(), dr)  # integer distances are exact
    assert sum(fallback_calls) > 0  # the ties did reach the fallback


@pytest.mark.parametrize("window,budget", [(Window(5, "msgnn", 2), None), (Window(4, "centered", 1), None),
                                           (Window(5, "msgnn", 2), 300), (Window(30, "msgnn", 1), 64)])
def test_windowed_ties_equal_reference_through_the_fallback(window, budget, fallback_calls):
    kw = dict(query_grid=(14, 12), cand_grid=(7, 9), window=window)
    q, x = _ints(2, (2, 14 * 12, 7)), _ints(3, (2, 7 * 9, 7))
    d, i = knn(q, x, 6, memory_budget=budget, **kw)
    dr, ir = knn_reference_fp64(q, x, 6, **kw)
    assert torch.equal(i, ir) and torch.equal(d.double(), dr)
    assert sum(fallback_calls) > 0


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_equal_reference(seed):
    """Shapes, k, budgets and windows drawn at random; quantised inputs so the answer is unique."""
    g = torch.Generator().manual_seed(100 + seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    qg, cg, e, b = (r(3, 16), r(3, 16)), (r(3, 12), r(3, 12)), r(1, 20), r(1, 3)
    window = Window(r(2, 8), ("msgnn", "centered")[seed % 2], r(1, 3)) if seed % 3 else None
    side = min(window.size, *cg) if window else None
    k = r(1, min(8, side * side if window else cg[0] * cg[1]))
    budget = (None, 64, 5000)[seed % 3]
    q, x = _ints(seed, (b, qg[0] * qg[1], e), levels=4), _ints(seed + 50, (b, cg[0] * cg[1], e), levels=4)
    kw = dict(query_grid=qg, cand_grid=cg, window=window)
    d, i = knn(q, x, k, memory_budget=budget, **kw)
    dr, ir = knn_reference_fp64(q, x, k, **kw)
    assert torch.equal(i, ir) and torch.equal(d.double(), dr)


def test_fallback_recovers_when_too_few_candidates_pass():
    """A threshold that admits nothing (as a failed error bound would) still yields the exact answer."""
    torch.manual_seed(4)
    queries, cands = torch.randn(6, 5), torch.randn(40, 5)
    xn = (cands * cands).sum(-1)

    def pairs_within(rows, thr):
        g = select_gemm(queries[rows], cands, xn)
        return (g <= thr[:, None]).nonzero(as_tuple=True)

    rows = torch.tensor([0, 2, 5])
    d, i = select.exact_fallback(queries, cands, rows, torch.full((3,), -1e30), pairs_within, 4, 40, 1 << 20)
    dr, ir = knn_reference_fp64(queries[rows][None], cands[None], 4)
    assert torch.equal(i, ir[0])
    torch.testing.assert_close(d.double(), dr[0], rtol=1e-6, atol=1e-6)


def select_gemm(q, x, xn):
    return xn[None, :] - 2 * q @ x.t()


@pytest.mark.parametrize("ncols,count", [(5000, 6), (5003, 6), (300, 6), (16 * 8 * 6, 6)])
def test_two_stage_smallest_equals_topk(ncols, count):
    g = torch.Generator().manual_seed(ncols)
    vals = torch.randint(0, 50, (9, ncols), generator=g).float()  # many equal values
    v, cols = select.smallest(vals, count)
    ref = torch.topk(vals, count, dim=1, largest=False, sorted=True).values
    assert torch.equal(v, ref)
    assert torch.equal(vals.gather(1, cols), v)
    assert (cols.sort(1).values.diff(dim=1) > 0).all()  # distinct columns


@pytest.mark.parametrize("dtype,offset", [(torch.float32, 0.0), (torch.float32, 30.0), (torch.float64, 30.0)])
def test_error_bound_holds(dtype, offset):
    """|g − (δ − ‖q‖²)| <= tol for the GEMM form computed as the engine does (addmm)."""
    g = torch.Generator().manual_seed(5)
    q = (torch.randn(64, 50, generator=g, dtype=torch.float64) + offset).to(dtype)
    x = (torch.randn(500, 50, generator=g, dtype=torch.float64) + offset).to(dtype)
    qn, xn = (q * q).sum(-1), (x * x).sum(-1)
    gform = torch.addmm(xn[None], q, x.t(), beta=1.0, alpha=-2.0).double()
    delta = select.direct_sqdist(q[:, None, :], x[None]).double()
    tol = select.GemmErrorBound.for_gemm(50, select.unit_roundoff(dtype), dtype).tol(qn, xn.max()).double()
    err = (gform - (delta - qn.double()[:, None])).abs()
    assert (err <= tol[:, None]).all()
    assert err.max() > 0 or dtype == torch.float64  # the check is not vacuous in float32
