"""The GEMMs that build the kNN shortlist, and faiss' brute-force shortlist.

Every function here computes the GEMM form g = ‖x‖² − 2 q·x of squared distances (without the
row-constant ‖q‖²). Only the shortlist depends on which GEMM ran: the final distances are recomputed
exactly and the completeness check (`derainkit.knn.select`) bounds the GEMM's rounding, so the results
are bit-identical whichever path is taken (tested in tests/test_knn_backends.py).

oneDNN: on CPU, float32, `torch.ops.mkldnn._linear_pointwise` (the fused linear op that torch.compile's
CPU backend emits) computes (−2q)·xᵀ + ‖x‖² in one call. When it was adopted (commit 4af6e16) it ran at
about 2× the speed of torch.addmm/baddbmm (MKL) on the project's 2-core AMD EPYC (Zen 3, AVX2); a later
single-thread check on the same, then busy, machine gave 1.25× for a 256×16384 global block and parity
for the batched windowed blocks. It is a private op, so it is only used after a probe has found it
present and fp32-exact; everything else goes through the public torch.addmm/baddbmm. Set
DERAINKIT_KNN_ONEDNN=0 (before the first search) to switch it off.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import Tensor

__all__ = ["ONEDNN_ENV", "onednn_linear_ok", "use_onednn", "linear_onednn", "gemm_form", "gemm_form_rows",
           "gemm_form_batched", "faiss_available", "faiss_shortlist"]

ONEDNN_ENV = "DERAINKIT_KNN_ONEDNN"
_FP32_ROUNDOFF = 2.0 ** -24


@functools.lru_cache(maxsize=1)
def onednn_linear_ok() -> bool:
    """Is the private oneDNN fused linear op there, and does it compute in full fp32?

    Probed once per process (the lru_cache is the only state; `onednn_linear_ok.cache_clear()` re-probes):
    a 37×300 by 300×53 product must stay within the fp32 error bound γ₃₀₁·Σ|a||w| of a float64
    reference, which bf16/TF32 internals would exceed. Any failure (missing op, changed signature, no
    oneDNN) means "no": the public ops are used.
    """
    if os.environ.get(ONEDNN_ENV, "1") == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        a = torch.randn(37, 300, generator=g)
        w = torch.randn(53, 300, generator=g)
        bias = torch.randn(53, generator=g)
        y = linear_onednn(a, w, bias)
        if y.shape != (37, 53) or y.dtype != torch.float32:
            return False
        ref = a.double() @ w.double().t() + bias.double()
        bound = 1.01 * 301 * _FP32_ROUNDOFF * (a.abs().double() @ w.abs().double().t() + bias.abs().double())
        return bool(((y.double() - ref).abs() <= bound + 1e-30).all())
    except Exception:  # the op is private: any error means it is not usable here
        return False


def use_onednn(t: Tensor, u_gemm: float) -> bool:
    """Whether a search on `t` takes the oneDNN GEMM: CPU float32 at full matmul precision, probe passed."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or u_gemm != _FP32_ROUNDOFF:
        return False
    return onednn_linear_ok()


def linear_onednn(a: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """a @ wᵀ + bias through oneDNN (CPU float32). Call only where `use_onednn` said yes."""
    return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")


def gemm_form(q: Tensor, x: Tensor, xn: Tensor, out: Tensor | None = None) -> Tensor:
    """g = ‖x‖² − 2 q·xᵀ (R×N) with the public torch.addmm, for q R×e, x N×e, xn = ‖x‖² (N)."""
    return torch.addmm(xn.unsqueeze(0), q, x.t(), beta=1.0, alpha=-2.0, out=out)


def gemm_form_rows(q: Tensor, x: Tensor, xn: Tensor, onednn: bool, max_rows: int
                   ) -> Callable[[int, int], Tensor]:
    """A function (r0, r1) -> g of query rows r0..r1 against every candidate (at most max_rows rows).

    oneDNN: the queries are scaled by −2 once (exact in binary floating point; scaling q, not x, keeps
    the copy small) and each call is one fused op. Public path: torch.addmm into one reused buffer, so
    no block pays for fresh pages. The returned block is only valid until the next call.
    """
    if onednn:
        q_times_minus2 = q * -2.0
        return lambda r0, r1: linear_onednn(q_times_minus2[r0:r1], x, xn)
    buf = torch.empty(max_rows, x.shape[0], dtype=q.dtype, device=q.device)
    return lambda r0, r1: gemm_form(q[r0:r1], x, xn, out=buf[: r1 - r0])


def gemm_form_batched(q: Tensor, x: Tensor, xn: Tensor, onednn: bool) -> Tensor:
    """g for B independent blocks: q B×R×e, x B×N×e, xn B×N -> B×R×N.

    oneDNN has no batched fused op, so it takes one call per block.
    """
    nb, _r, _e = q.shape
    if onednn:
        q_times_minus2 = q * -2.0  # exact; q itself is kept for the exact re-rank
        return torch.stack([linear_onednn(q_times_minus2[t], x[t], xn[t]) for t in range(nb)])
    return torch.baddbmm(xn.view(nb, 1, -1), q, x.transpose(1, 2), beta=1.0, alpha=-2.0)


# ----------------------------------------------------------------------------------------------------------
# faiss (optional, global search on CPU tensors)

def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_shortlist(q: Tensor, x: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """faiss' brute-force `count` nearest candidates of each query: (values m×count in q's dtype, columns).

    faiss computes ‖q‖² + ‖x‖² − 2 q·x in float32, so unlike `gemm_form` its values include ‖q‖².
    """
    import faiss
    import numpy as np

    q32 = q.to(torch.float32).contiguous()
    x32 = x.to(torch.float32).contiguous()
    val, idx = faiss.knn(q32.numpy(), x32.numpy(), count)
    return (torch.from_numpy(np.ascontiguousarray(val)).to(q.dtype),
            torch.from_numpy(np.ascontiguousarray(idx)).to(torch.int64))
