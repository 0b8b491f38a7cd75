"""Exact patch kNN, the entry point: `knn` (global or windowed, pure PyTorch, CPU and CUDA) and the
brute-force float64 reference `knn_reference_fp64` the tests compare it with.

Where the engine lives:
- `derainkit.knn.geometry`  windows (`Window`, origins, the official index tensor) and query blocks;
- `derainkit.knn.select`    exact selection: re-rank, completeness check and fallback, shared by all paths;
- `derainkit.knn.global_search`, `derainkit.knn.windowed`  the two searches;
- `derainkit.knn.backends`  the shortlist GEMMs (oneDNN when probed exact, else public torch ops), faiss.
Results are exact squared L2 distances, ties broken by the lower candidate index, and do not depend on
the device's GEMM, the blocking or the memory budget.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from derainkit import sysmem
from derainkit.knn.backends import faiss_available
from derainkit.knn.errors import KnnError
from derainkit.knn.geometry import Window, window_index, window_origins, window_side
from derainkit.knn.global_search import global_search
from derainkit.knn.select import direct_sqdist
from derainkit.knn.windowed import windowed_search

__all__ = ["Window", "knn", "knn_reference_fp64", "window_origins", "window_index", "window_side",
           "default_memory_budget", "KnnError"]

BACKENDS = ("auto", "torch", "faiss")
_faiss_available = faiss_available  # older name, imported by tests/test_knn_search.py

# Default memory budget (bytes of distance blocks), from what the device has free. Speed and peak memory
# only, never the results. CUDA: a quarter of the free memory within [64 MiB, 2 GiB]; larger blocks stop
# paying off long before 2 GiB. CPU: an eighth of MemAvailable within [16 MiB, 256 MiB]; on the project's
# 2-core EPYC, blocks of a few tens of MB already run the GEMM at full speed, so a low cap keeps RSS small.
_CUDA_BUDGET = (64 << 20, 2 << 30, 4)  # (floor, cap, divisor of free memory)
_CPU_BUDGET = (16 << 20, 256 << 20, 8)


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes a search may use for its distance blocks, from the memory free on `device`."""
    device = torch.device(device)
    floor, cap, divisor = _CUDA_BUDGET if device.type == "cuda" else _CPU_BUDGET
    return int(max(floor, min(sysmem.available_memory(device) // divisor, cap)))


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
        side = window_side(window, cg)
        if k > side * side:
            raise KnnError(f"k={k} exceeds the {side}×{side}={side * side} candidates of the search window")
    elif k > cand.shape[1]:
        raise KnnError(f"k={k} exceeds the number of candidates n={cand.shape[1]}")
    return qg, cg


def _check_faiss(window: Window | None, device: torch.device) -> None:
    if window is not None:
        raise KnnError("backend='faiss' supports global search only (window=None)")
    if device.type != "cpu":
        raise KnnError("backend='faiss' needs CPU tensors (faiss-gpu is not supported)")
    if not faiss_available():
        raise KnnError("backend='faiss' needs the faiss package (pip install faiss-cpu)")


def _as_compute_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.detach().to(dtype).contiguous() if t.dtype != dtype else t.detach().contiguous()


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
    then the same exact re-rank, so its results are identical to "torch".
    """
    if backend not in BACKENDS:
        raise KnnError(f"backend must be one of {BACKENDS}, got {backend!r}")
    qg, cg = _validate(query, cand, k, query_grid, cand_grid, window)
    if memory_budget is None:
        memory_budget = default_memory_budget(query.device)
    elif not isinstance(memory_budget, int) or isinstance(memory_budget, bool) or memory_budget < 1:
        raise KnnError(f"memory_budget must be a positive int (bytes), got {memory_budget!r}")
    if backend == "faiss":
        _check_faiss(window, query.device)
    dtype = torch.float64 if torch.float64 in (query.dtype, cand.dtype) else torch.float32
    q, x = _as_compute_dtype(query, dtype), _as_compute_dtype(cand, dtype)
    with torch.no_grad():
        if window is not None:
            d, i = windowed_search(q, x, k, qg, cg, window, memory_budget)
        else:
            d, i = global_search(q, x, k, memory_budget, "faiss" if backend == "faiss" else "torch")
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
    allowed = window_index(qg, cg, window, q.device) if window is not None else None  # m × o
    out_d = torch.empty(b, m, k, dtype=torch.float64, device=q.device)
    out_i = torch.empty(b, m, k, dtype=torch.int64, device=q.device)
    step = max(1, (64 << 20) // (8 * n * e))  # direct differences, ~64 MB at a time
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        d = direct_sqdist(q[:, r0:r1, None, :], x[:, None, :, :])  # b × rows × n
        if allowed is not None:
            mask = torch.ones(r1 - r0, n, dtype=torch.bool, device=q.device)
            mask.scatter_(1, allowed[r0:r1], False)
            d = d.masked_fill(mask, math.inf)
        d_s, p = d.sort(dim=2, stable=True)  # stable: ties keep index order
        out_d[:, r0:r1], out_i[:, r0:r1] = d_s[:, :, :k], p[:, :, :k]
    return out_d + eps, out_i
