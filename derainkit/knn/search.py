"""Exact patch kNN: global and windowed (MSGNN's search window), pure PyTorch, CPU and CUDA.

How a search runs (both modes):
1. Shortlist: squared distances in GEMM form g = ‖x‖² − 2 q·xᵀ (‖q‖² is row-constant, so it is left out of
   the ranking), computed block by block so no block exceeds the memory budget, then the kk = k + margin
   smallest per query with `topk`.
2. Exact re-rank: the shortlist distances are recomputed directly as Σ(q − x)² in the compute dtype (far
   more accurate than the GEMM form when distances are small next to the norms) and sorted by
   (distance, candidate index), which gives deterministic tie-breaking by index.
3. Completeness check: the GEMM form has a rounding error bounded by `tol` (a worst-case bound from the
   vector length and norms). If the kk-th shortlisted value is not clearly above the k-th exact distance, a
   candidate outside the shortlist could still belong to the answer (near-ties, duplicate candidates); those
   few queries are redone exactly over every candidate that could qualify.

Windowed search (MSGNN `index_neighbours` semantics) uses the blocked local GEMM: a rectangle of queries
shares one union rectangle of candidate windows, a single dense GEMM covers it, and candidates outside each
query's own window are set to +inf before `topk`. The m×o index tensor of the official code is never built.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from derainkit.errors import DerainkitError

__all__ = ["Window", "knn", "knn_reference_fp64", "window_origins", "window_index", "window_side",
           "default_memory_budget"]

_RULES = ("msgnn", "centered")
_BACKENDS = ("auto", "torch", "faiss", "triton")
# Shortlist margin: extra candidates kept beyond k so the exact re-rank rarely needs the fallback.
_MARGIN = 8


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


def _validate(query: Tensor, cand: Tensor, k: int, query_grid, cand_grid, window):
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


def _compute_dtype(query: Tensor, cand: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (query.dtype, cand.dtype) else torch.float32


def _unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    if dtype == torch.float64:
        return 2.0 ** -53
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                  or torch.get_float32_matmul_precision() != "highest"):
        return 2.0 ** -11  # TF32 / bf16x3 GEMMs round the inputs to 10-bit mantissas
    return 2.0 ** -24


def _tol_factor(e: int, u: float) -> float:
    # |g − (δ − ‖q‖²)| <= 4·γ_{e+2}·(‖q‖² + ‖x‖²) with γ_n = n·u/(1 − n·u): covers the GEMM dot product,
    # the candidate norm, the direct re-rank Σ(q−x)² and the query norm. Worst case, so fallbacks are
    # triggered only by genuine near-ties.
    n = e + 2
    return 4.0 * n * u / max(1e-3, 1.0 - n * u) * 1.01


# ----------------------------------------------------------------------------------------------------------
# exact re-rank helpers

def _lexsort_rows(dist: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (dist, idx) ascending."""
    idx_s, p = idx.sort(dim=-1)
    dist_s = dist.gather(-1, p)
    dist_s, p2 = dist_s.sort(dim=-1, stable=True)
    return dist_s, idx_s.gather(-1, p2)


def _direct_sqdist(q: Tensor, x: Tensor) -> Tensor:
    """Σ(q − x)² over the last dim; q broadcasts against x."""
    d = q - x
    return (d * d).sum(-1)


def _rerank(q: Tensor, cand_flat: Tensor, gidx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact distances of shortlisted candidates, sorted by (dist, idx); returns the full sorted shortlist.

    q: r×e, cand_flat: N×e, gidx: r×kk indices into cand_flat.
    """
    r, kk = gidx.shape
    xs = cand_flat.index_select(0, gidx.reshape(-1)).view(r, kk, -1)
    d = _direct_sqdist(q[:, None, :], xs)
    return _lexsort_rows(d, gidx)


def _topk_pairs(rr: Tensor, cc: Tensor, dd: Tensor, nrows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row r of a (row, col, dist) pair list: the k pairs smallest by (dist, col).

    Returns (dist nrows×k, col nrows×k, ok nrows bool) where ok is False for rows with fewer than k pairs.
    """
    if rr.numel() == 0:
        z = torch.zeros(nrows, k, dtype=dd.dtype, device=dd.device)
        return z, z.to(torch.int64), torch.zeros(nrows, dtype=torch.bool, device=dd.device)
    p = torch.argsort(cc, stable=True)
    p = p[torch.argsort(dd[p], stable=True)]
    p = p[torch.argsort(rr[p], stable=True)]
    counts = torch.bincount(rr, minlength=nrows)
    starts = torch.cumsum(counts, 0) - counts
    ok = counts >= k
    pos = (starts[:, None] + torch.arange(k, device=rr.device)[None, :]).clamp_max(max(rr.numel() - 1, 0))
    sel = p[pos]
    return dd[sel], cc[sel], ok


# ----------------------------------------------------------------------------------------------------------
# global search (torch)

def _global_torch(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact global kNN for one batch item: q m×e, x n×e (same float dtype)."""
    m, e = q.shape
    n = x.shape[0]
    el = q.element_size()
    xn = (x * x).sum(-1)  # n
    qn = (q * q).sum(-1)  # m
    u = _unit_roundoff(q.dtype, q.device)
    tolf = _tol_factor(e, u)
    xn_max = float(xn.max())
    kk = min(n, k + _MARGIN)
    # candidate chunk: the whole set unless a single row of it would break the budget
    nc = max(1, min(n, budget // el))
    rows = max(1, min(m, budget // (el * nc)))
    out_d = torch.empty(m, k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(m, k, dtype=torch.int64, device=q.device)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        qc = q[r0:r1]
        gval, gidx = _global_shortlist(qc, x, xn, kk, nc)
        d_s, i_s = _rerank(qc, x, gidx, k)
        d_k = d_s[:, k - 1]
        tol = tolf * (qn[r0:r1] + xn_max)
        gmax = gval.max(dim=1).values
        need = (gmax + qn[r0:r1] - tol <= d_k) if kk < n else torch.zeros_like(d_k, dtype=torch.bool)
        out_d[r0:r1] = d_s[:, :k]
        out_i[r0:r1] = i_s[:, :k]
        if bool(need.any()):
            rows_fb = need.nonzero().squeeze(1)
            thr = d_k[rows_fb] - qn[r0:r1][rows_fb] + tol[rows_fb]
            fd, fi = _global_fallback(qc[rows_fb], x, xn, thr, k, budget)
            out_d[r0 + rows_fb] = fd
            out_i[r0 + rows_fb] = fi
    return out_d, out_i


def _global_shortlist(qc: Tensor, x: Tensor, xn: Tensor, kk: int, nc: int) -> tuple[Tensor, Tensor]:
    """kk smallest GEMM-form values g = ‖x‖² − 2 q·x per query row (values and candidate indices)."""
    n = x.shape[0]
    best_v = best_i = None
    for c0 in range(0, n, nc):
        c1 = min(n, c0 + nc)
        g = torch.addmm(xn[c0:c1].unsqueeze(0), qc, x[c0:c1].t(), beta=1.0, alpha=-2.0)
        kc = min(kk, c1 - c0)
        v, i = torch.topk(g, kc, dim=1, largest=False, sorted=False)
        if c0:
            i = i + c0
        if best_v is None:
            best_v, best_i = v, i
        else:
            v = torch.cat([best_v, v], 1)
            i = torch.cat([best_i, i], 1)
            kc = min(kk, v.shape[1])
            v, p = torch.topk(v, kc, dim=1, largest=False, sorted=False)
            best_v, best_i = v, i.gather(1, p)
    return best_v, best_i


def _global_fallback(qf: Tensor, x: Tensor, xn: Tensor, thr: Tensor, k: int, budget: int
                     ) -> tuple[Tensor, Tensor]:
    """Exact top-k for a few queries: every candidate whose GEMM value is <= thr is re-ranked exactly.

    thr bounds the GEMM value of every candidate that could be in the answer, so the set is complete.
    """
    r, e = qf.shape
    n = x.shape[0]
    el = qf.element_size()
    out_d = torch.empty(r, k, dtype=qf.dtype, device=qf.device)
    out_i = torch.empty(r, k, dtype=torch.int64, device=qf.device)
    # worst case every candidate passes the threshold: ~ (8+8+el+8) bytes per pair
    grp = max(1, min(r, budget // max(1, n * 32)))
    for g0 in range(0, r, grp):
        g1 = min(r, g0 + grp)
        fd, fi, ok = _fallback_group(qf[g0:g1], x, xn, thr[g0:g1], k, budget)
        if not bool(ok.all()):
            # the error bound failed (non-finite values?): re-rank those rows over every candidate
            bad = (~ok).nonzero().squeeze(1)
            inf = torch.full((bad.numel(),), math.inf, dtype=qf.dtype, device=qf.device)
            fd2, fi2, _ = _fallback_group(qf[g0:g1][bad], x, xn, inf, k, budget)
            fd[bad], fi[bad] = fd2, fi2
        out_d[g0:g1], out_i[g0:g1] = fd, fi
    return out_d, out_i


def _fallback_group(qf: Tensor, x: Tensor, xn: Tensor, thr: Tensor, k: int, budget: int):
    r, e = qf.shape
    n = x.shape[0]
    el = qf.element_size()
    nc = max(1, min(n, budget // (el * r)))
    rr_l, cc_l = [], []
    for c0 in range(0, n, nc):
        c1 = min(n, c0 + nc)
        g = torch.addmm(xn[c0:c1].unsqueeze(0), qf, x[c0:c1].t(), beta=1.0, alpha=-2.0)
        rr, cc = (g <= thr[:, None]).nonzero(as_tuple=True)
        rr_l.append(rr)
        cc_l.append(cc + c0)
    rr = torch.cat(rr_l)
    cc = torch.cat(cc_l)
    dd = torch.empty(rr.numel(), dtype=qf.dtype, device=qf.device)
    step = max(1, budget // (2 * el * e))
    for p0 in range(0, rr.numel(), step):
        p1 = min(rr.numel(), p0 + step)
        dd[p0:p1] = _direct_sqdist(qf.index_select(0, rr[p0:p1]), x.index_select(0, cc[p0:p1]))
    return _topk_pairs(rr, cc, dd, r, k)


# ----------------------------------------------------------------------------------------------------------
# windowed search (torch, blocked local GEMM)

def _block_plan(R: Tensor, C: Tensor, S: int, b: int, e: int, el: int, budget: int) -> tuple[int, int]:
    """Pick the query block (br rows × bc cols) with the lowest estimated cost per query.

    Cost per query ≈ (union candidates of the block + a per-block overhead) / queries in the block.
    """
    def spans(O: Tensor, sizes: list[int]) -> dict[int, int]:
        out = {}
        for s in sizes:
            if s <= O.numel():
                out[s] = int((O[s - 1:] - O[: O.numel() - s + 1]).max()) if O.numel() else 0
        return out

    Rl, Cl = R.cpu(), C.cpu()
    sizes = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64]
    rs = spans(Rl, sizes + [Rl.numel()])
    cs = spans(Cl, sizes + [Cl.numel()])
    overhead = 30000  # per-block fixed cost in units of one distance entry (python + dispatch)
    best, best_cost = (1, 1), math.inf
    for br, dr in rs.items():
        for bc, dc in cs.items():
            U = (S + dr) * (S + dc)
            mem = b * br * bc * U * el * 2  # distance block + topk/penalty temporaries
            if mem > budget and (br, bc) != (1, 1):
                continue
            cost = (U * (1 + 8.0 / e) + overhead / b) / (br * bc)
            if cost < best_cost:
                best, best_cost = (br, bc), cost
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
    o = S * S
    R, C = window_origins(qg, cg, window, dev)
    Rl, Cl = R.tolist(), C.tolist()
    kk = min(o, k + _MARGIN)
    br, bc = _block_plan(R, C, S, b, e, el, budget)

    u = _unit_roundoff(q.dtype, dev)
    tolf = _tol_factor(e, u)
    xn = (x * x).sum(-1)  # b × n
    qn = (q * q).sum(-1)  # b × m
    xn_max = xn.amax(dim=1)  # b
    q4 = q.view(b, m1, m2, e)
    x4 = x.view(b, n1, n2, e)
    xn3 = xn.view(b, n1, n2)
    x_flat = x.reshape(b * n, e)
    boff = (torch.arange(b, device=dev) * n).view(b, 1, 1)
    out_d = torch.empty(b, m1, m2, k, dtype=q.dtype, device=dev)
    out_i = torch.empty(b, m1, m2, k, dtype=torch.int64, device=dev)
    inf = math.inf
    for r0 in range(0, m1, br):
        r1 = min(m1, r0 + br)
        ur0, ur1 = Rl[r0], Rl[r1 - 1] + S
        uh = ur1 - ur0
        a = torch.arange(ur0, ur1, device=dev)
        # +inf for candidate rows outside each query row's window, 0 inside
        rowpen = torch.where((a[None, :] >= R[r0:r1, None]) & (a[None, :] < R[r0:r1, None] + S), 0.0, inf)
        rowpen = rowpen.to(q.dtype)
        for c0 in range(0, m2, bc):
            c1 = min(m2, c0 + bc)
            uc0, uc1 = Cl[c0], Cl[c1 - 1] + S
            uw = uc1 - uc0
            cc = torch.arange(uc0, uc1, device=dev)
            colpen = torch.where((cc[None, :] >= C[c0:c1, None]) & (cc[None, :] < C[c0:c1, None] + S), 0.0, inf)
            colpen = colpen.to(q.dtype)
            nr, ncl = r1 - r0, c1 - c0
            nq = nr * ncl
            qb = q4[:, r0:r1, c0:c1].reshape(b, nq, e)
            xb = x4[:, ur0:ur1, uc0:uc1].reshape(b, uh * uw, e)
            xnb = xn3[:, ur0:ur1, uc0:uc1].reshape(b, 1, uh * uw)
            g = torch.baddbmm(xnb, qb, xb.transpose(1, 2), beta=1.0, alpha=-2.0)  # b × nq × U
            g5 = g.view(b, nr, ncl, uh, uw)
            g5.add_(rowpen.view(1, nr, 1, uh, 1))
            g5.add_(colpen.view(1, 1, ncl, 1, uw))
            gval, lidx = torch.topk(g, kk, dim=2, largest=False, sorted=False)  # b × nq × kk
            gidx = (ur0 + lidx // uw) * n2 + (uc0 + lidx % uw)
            qflat = qb.reshape(b * nq, e)
            d_s, i_s = _rerank(qflat, x_flat, (gidx + boff).view(b * nq, kk), k)
            i_s = i_s.view(b, nq, kk) - boff
            d_s = d_s.view(b, nq, kk)
            res_d = d_s[:, :, :k]
            res_i = i_s[:, :, :k]
            if kk < o:
                qn_b = qn.view(b, m1, m2)[:, r0:r1, c0:c1].reshape(b, nq)
                tol = tolf * (qn_b + xn_max[:, None])
                need = gval.amax(dim=2) + qn_b - tol <= d_s[:, :, k - 1]
                if bool(need.any()):
                    res_d = res_d.clone()
                    res_i = res_i.clone()
                    bi, qi = need.nonzero(as_tuple=True)
                    fd, fi = _window_fallback(qb[bi, qi], x_flat, bi, r0 + qi // ncl, c0 + qi % ncl,
                                              R, C, S, n, n2, k, budget)
                    res_d[bi, qi] = fd
                    res_i[bi, qi] = fi
            out_d[:, r0:r1, c0:c1] = res_d.view(b, nr, ncl, k)
            out_i[:, r0:r1, c0:c1] = res_i.view(b, nr, ncl, k)
    return out_d.view(b, m, k), out_i.view(b, m, k)


def _window_fallback(qf: Tensor, x_flat: Tensor, bi: Tensor, ri: Tensor, ci: Tensor, R: Tensor, C: Tensor,
                     S: int, n: int, n2: int, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """Exact top-k over the whole S×S window for a few queries (near-ties in the shortlist)."""
    r, e = qf.shape
    off = torch.arange(S, device=qf.device)
    o = S * S
    step = max(1, budget // (2 * qf.element_size() * o * e))
    out_d = torch.empty(r, k, dtype=qf.dtype, device=qf.device)
    out_i = torch.empty(r, k, dtype=torch.int64, device=qf.device)
    for p0 in range(0, r, step):
        p1 = min(r, p0 + step)
        rows = R[ri[p0:p1]][:, None] + off[None, :]
        cols = C[ci[p0:p1]][:, None] + off[None, :]
        idx = (rows[:, :, None] * n2 + cols[:, None, :]).reshape(p1 - p0, o)  # ascending per row
        xs = x_flat.index_select(0, (idx + bi[p0:p1, None] * n).reshape(-1)).view(p1 - p0, o, e)
        d = _direct_sqdist(qf[p0:p1, None, :], xs)
        d_s, p = d.sort(dim=1, stable=True)  # stable on ascending idx: ties go to the lower index
        out_d[p0:p1] = d_s[:, :k]
        out_i[p0:p1] = idx.gather(1, p[:, :k])
    return out_d, out_i


# ----------------------------------------------------------------------------------------------------------
# faiss (optional, global only, CPU tensors)

def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _global_faiss(q: Tensor, x: Tensor, k: int, budget: int) -> tuple[Tensor, Tensor]:
    """faiss brute-force shortlist, then the same exact re-rank and completeness check as the torch path.

    So results are identical to backend="torch" (same distances, same tie-breaking), only the shortlist
    GEMM + selection comes from faiss.
    """
    import faiss
    import numpy as np

    m, e = q.shape
    n = x.shape[0]
    kk = min(n, k + _MARGIN)
    q32 = q.to(torch.float32).contiguous()
    x32 = x.to(torch.float32).contiguous()
    gval, gidx = faiss.knn(q32.numpy(), x32.numpy(), kk)  # gval = ‖q‖² + ‖x‖² − 2 q·x (fp32 GEMM form)
    gval = torch.from_numpy(np.ascontiguousarray(gval))
    gidx = torch.from_numpy(np.ascontiguousarray(gidx)).to(torch.int64)
    xn = (x * x).sum(-1)
    qn = (q * q).sum(-1)
    d_s, i_s = _rerank(q, x, gidx, k)
    d_k = d_s[:, k - 1]
    u = max(_unit_roundoff(q.dtype, q.device), 2.0 ** -24)  # faiss always works in fp32
    tol = _tol_factor(e, u) * (qn + float(xn.max()))
    out_d, out_i = d_s[:, :k].contiguous(), i_s[:, :k].contiguous()
    if kk < n:
        need = gval.max(dim=1).values.to(q.dtype) - tol <= d_k
        if bool(need.any()):
            rows_fb = need.nonzero().squeeze(1)
            thr = d_k[rows_fb] - qn[rows_fb] + tol[rows_fb]
            fd, fi = _global_fallback(q[rows_fb], x, xn, thr, k, budget)
            out_d[rows_fb], out_i[rows_fb] = fd, fi
    return out_d, out_i


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
    Distances are computed in float32 (float64 if an input is float64). No distance block larger than
    `memory_budget` bytes is formed (default: from the free memory of the device).
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
    for name, t in (("query", q), ("cand", x)):
        if not bool(torch.isfinite(t).all()):
            raise KnnError(f"{name} contains NaN or inf values")

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
    d = _direct_sqdist(q[:, :, None, :], x[:, None, :, :])  # b × m × n
    if window is not None:
        I = window_index(qg, cg, window, q.device)  # m × o
        mask = torch.ones(d.shape[1:], dtype=torch.bool, device=q.device)
        mask.scatter_(1, I, False)
        d = d.masked_fill(mask, math.inf)
    d_s, p = d.sort(dim=2, stable=True)
    return d_s[:, :, :k] + eps, p[:, :, :k]
