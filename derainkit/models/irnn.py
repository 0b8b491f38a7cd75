"""SPANet's four-direction IRNN in pure PyTorch: a literal per-step loop (the reference) and a fast scan.

The official SPANet code (stevewongv/SPANet @82d2889) computes this with a CuPy CUDA kernel
(``IRNN_Forward_cuda.cu``), CUDA-only. What the kernel computes, per direction, channel ``c`` and line
of the image (a row for left/right, a column for up/down), is a ReLU recurrence along the line::

    h_0 = relu(x_0)                                  (the edge it starts from: no weight, no bias)
    h_i = relu(w_c * h_{i-1} + b_c + x_i)            (i = 1 … n-1)

with its own ``w_c``, ``b_c`` per direction and channel. The four directions, in the kernel's output
order ``up, right, down, left``, start from the bottom row (up), the left column (right), the top row
(down) and the right column (left). The ReLU at every step makes the recurrence nonlinear, so it is
a scan of ``n`` dependent steps.

``irnn_loop``  the literal reference: one direction at a time, one step at a time along it, the four
               results stacked; autograd differentiates it. 2·(H+W) Python steps of four small
               operations each, on strided slices for the horizontal directions.
``irnn``       the fast scan (our reconstruction, same recurrence): the two directions of each axis run
               together, and every step updates every image, channel and line at once. Up and down
               live in planes 0 and 2 of the b×4×c×H×W output itself; at step j down is at row j
               and up at row H-1-j, and since the distance between those rows is fixed for a given
               j, both are one strided view, updated by one in-place multiply-add and one in-place
               ReLU. Right and left run the same way in a b×2×c×W×H transposed work tensor (so
               their lines are contiguous too: per-column steps on strided memory are ~30x slower on
               a CPU), copied back plane by plane at the end. max(H, W) steps of 4 operations in
               place of the loop's 2·(H+W) steps of 4, and no tensor is allocated per step. The
               backward pass (a custom autograd function) runs the reverse recurrence
               δ_j = m_j·(g_j + w·δ_{j+1}), m_j = [h_j > 0] (the ReLU's derivative, as
               ``torch.relu`` takes it) the same way, then ∂x = Σ_directions δ,
               ∂b = Σ_{j≥1} δ_j and ∂w = Σ_{j≥1} δ_j·h_{j-1} (per channel, as dot products).

Both take ``x`` (B×C×H×W) and per-direction coefficients ``weight``, ``bias`` of shape 4×C in the
order of :data:`DIRECTIONS`, and return B×4×C×H×W; ``out.reshape(B, 4*C, H, W)`` is the official
``torch.cat([up, right, down, left], 1)``. The fast scan computes each step as ``(x_i + b) + w·h``
where the loop computes ``(w·h + b) + x_i``, so the two agree to float rounding, not bit for bit;
``tests/test_peers_a.py`` checks values and gradients and ``bench/bench_irnn.py`` times both. The
fast scan runs in float32 whatever the input dtype (a 1000-step recurrence in bf16 would drift) and
returns the input's dtype. No log-depth (parallel-prefix) form is used: with the ReLU, a composed
span of steps is a clamp-shaped map (three numbers per position, and products of ``w`` over the
span), and a prefix scan makes log2(n) passes over three such maps, many times the memory traffic
of this single pass, which is what limits a CPU. It could pay on a GPU, where the per-step launch
latency of this scan dominates; it is not implemented.
"""
from __future__ import annotations

import torch

DIRECTIONS = ("up", "right", "down", "left")  # the official kernel's output order
_HORIZONTAL = {"up": False, "right": True, "down": False, "left": True}  # scans along a row
_REVERSED = {"up": True, "right": False, "down": False, "left": True}  # starts at the far edge


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"IRNN expects a b×c×H×W tensor, got {tuple(x.shape)}")
    want = (4, x.shape[1])
    if tuple(weight.shape) != want or tuple(bias.shape) != want:
        raise ValueError(f"IRNN weight and bias must be 4×C = {want}, "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")


# --------------------------------------------------------------------------------------------- reference

def irnn_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The recurrence step by step, one direction after the other (reference; differentiable)."""
    _check(x, weight, bias)
    outs = []
    for d, name in enumerate(DIRECTIONS):
        axis = 3 if _HORIZONTAL[name] else 2
        w, b = weight[d].view(1, -1, 1), bias[d].view(1, -1, 1)
        line = x.unbind(axis)  # n slices of b×c×(other side)
        order = range(len(line) - 1, -1, -1) if _REVERSED[name] else range(len(line))
        h: torch.Tensor | None = None
        res: list[torch.Tensor | None] = [None] * len(line)
        for i in order:
            h = torch.relu(line[i]) if h is None else torch.relu(w * h + b + line[i])
            res[i] = h
        outs.append(torch.stack(res, dim=axis))
    return torch.stack(outs, dim=1)


# --------------------------------------------------------------------------------------------- fast scan
# A "pair" is two directions that scan the same axis in opposite senses, stored as planes of one
# contiguous b×P×c×n×r tensor (n: positions along the scan axis, r: lines). At scan step j the forward
# plane is at row j and the reversed one at row n-1-j; both rows are one strided view (the distance
# between them is constant for a given j), so one in-place operation updates both.
#   vertical pair   up (reversed) and down, planes 0 and 2 of the output itself (b×4×c×H×W)
#   horizontal pair right and left, planes 0 and 1 of a transposed b×2×c×W×H work tensor, so that
#                   their lines are contiguous too; strided per-column steps would be ~30x slower on a CPU

_VERTICAL = ((0, True), (2, False))  # (plane, reversed): up, down in the output
_HORIZONTAL_PAIR = ((0, False), (1, True))  # right, left in the transposed work tensor


def _step(t: torch.Tensor, planes: tuple, j: int) -> torch.Tensor:
    """The b×2×c×r view of scan step ``j`` of a pair's two planes of ``t`` (b×P×c×n×r, contiguous)."""
    n = t.shape[3]
    (p0, rev0), (p1, rev1) = planes
    row0, row1 = (n - 1 - j if rev0 else j), (n - 1 - j if rev1 else j)
    st = t.stride()
    return t.as_strided((t.shape[0], 2, t.shape[2], t.shape[4]),
                        (st[0], (p1 - p0) * st[1] + (row1 - row0) * st[3], st[2], st[4]),
                        t.storage_offset() + p0 * st[1] + row0 * st[3])


def _transpose_planes(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[b, c] = src[b, c]ᵀ for b×c×n×r tensors: plane by plane, which takes PyTorch's blocked 2-D
    transpose copy, faster on a CPU than one batched strided copy."""
    for b in range(dst.shape[0]):
        for c in range(dst.shape[1]):
            dst[b, c].copy_(src[b, c].t())
    return dst


def _start(t: torch.Tensor, planes: tuple, x_lines: torch.Tensor, bias: torch.Tensor) -> None:
    """Fill a pair's planes with x + bias, then its first step with relu(x) (the edge has no bias).
    ``x_lines`` may be one of the two planes itself (the transposed input is written there first)."""
    n = t.shape[3]
    edges = torch.stack([x_lines[:, :, n - 1 if rev else 0] for _, rev in planes], 1)
    aliased = [x_lines.data_ptr() == t[:, p].data_ptr() for p, _ in planes]
    for k in sorted(range(2), key=lambda k: aliased[k]):  # the plane holding x_lines last
        torch.add(x_lines, bias[k].view(1, -1, 1, 1), out=t[:, planes[k][0]])
    _step(t, planes, 0).copy_(edges).relu_()


def _scan(t: torch.Tensor, planes: tuple, a: torch.Tensor, j: int) -> None:
    _step(t, planes, j).addcmul_(a, _step(t, planes, j - 1)).relu_()  # relu_: much faster than clamp_ on a CPU


def _unscan(d: torch.Tensor, gain: torch.Tensor, planes: tuple, j: int) -> None:
    """δ_j += k_j·δ_{j+1} in place, where ``d`` holds m·g on entry and k = m·w (m = [h > 0], the ReLU's
    derivative as ``torch.relu`` takes it): δ_j = m_j·(g_j + w·δ_{j+1}) in one operation per step."""
    _step(d, planes, j).addcmul_(_step(gain, planes, j), _step(d, planes, j + 1))


def _pair_sums(d: torch.Tensor, h: torch.Tensor, planes: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ δ_j·h_{j-1}, Σ δ_j) over every step but the first, per plane and channel: 2×c each."""
    grad_w, grad_b = [], []
    for p, rev in planes:
        dp, hp = (d[:, p, :, :-1], h[:, p, :, 1:]) if rev else (d[:, p, :, 1:], h[:, p, :, :-1])
        grad_b.append(dp.sum(dim=(0, 2, 3)))
        # one dot product per channel (bmm), without a product tensor the size of the image
        dots = [torch.bmm(dp[b].reshape(dp.shape[1], 1, -1), hp[b].reshape(hp.shape[1], -1, 1)).view(-1)
                for b in range(d.shape[0])]
        grad_w.append(torch.stack(dots).sum(0))
    return torch.stack(grad_w), torch.stack(grad_b)


class _IRNNScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xf, wf, bf = x.float(), weight.float(), bias.float()
        av, ah = wf[[0, 2]].view(1, 2, c, 1), wf[[1, 3]].view(1, 2, c, 1)
        out = x.new_empty(b, 4, c, h, w, dtype=torch.float32)
        horiz = x.new_empty(b, 2, c, w, h, dtype=torch.float32)
        _start(out, _VERTICAL, xf, bf[[0, 2]])
        _start(horiz, _HORIZONTAL_PAIR, _transpose_planes(horiz[:, 0], xf), bf[[1, 3]])
        for j in range(1, max(h, w)):
            if j < h:
                _scan(out, _VERTICAL, av, j)
            if j < w:
                _scan(horiz, _HORIZONTAL_PAIR, ah, j)
        _transpose_planes(out[:, 1], horiz[:, 0])
        _transpose_planes(out[:, 3], horiz[:, 1])
        ctx.save_for_backward(out, horiz, weight)
        ctx.x_dtype = x.dtype
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        out, horiz, weight = ctx.saved_tensors
        b, _, c, h, w = out.shape
        wf = weight.float()
        grad_out = grad_out.float()
        pair = ((0, True), (1, False))  # up, down as planes 0, 1 of the b×2×c×H×W views below
        hv = out[:, 0::2]
        on_v, on_h = hv > 0, horiz > 0
        dv = grad_out[:, 0::2] * on_v  # m·g (multiplications: torch.where is several times slower on a CPU)
        dh = torch.empty_like(horiz)
        _transpose_planes(dh[:, 0], grad_out[:, 1])
        _transpose_planes(dh[:, 1], grad_out[:, 3])
        dh.mul_(on_h)
        gain_v = torch.mul(on_v, wf[[0, 2]].view(1, 2, c, 1, 1))  # k = m·w, one pass each
        gain_h = torch.mul(on_h, wf[[1, 3]].view(1, 2, c, 1, 1))
        del on_v, on_h
        for j in range(max(h, w) - 2, -1, -1):
            if j < h - 1:
                _unscan(dv, gain_v, pair, j)
            if j < w - 1:
                _unscan(dh, gain_h, _HORIZONTAL_PAIR, j)
        del gain_v, gain_h
        gw_v, gb_v = _pair_sums(dv, hv, pair)
        gw_h, gb_h = _pair_sums(dh, horiz, _HORIZONTAL_PAIR)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = dv[:, 0].add_(dv[:, 1])
            dh_sum = dh[:, 0].add_(dh[:, 1])
            for i in range(b):
                for k in range(c):
                    grad_x[i, k].add_(dh_sum[i, k].t())
            grad_x = grad_x.to(ctx.x_dtype)
        grad_w = torch.stack([gw_v[0], gw_h[0], gw_v[1], gw_h[1]]).to(weight.dtype)  # DIRECTIONS order
        grad_b = torch.stack([gb_v[0], gb_h[0], gb_v[1], gb_h[1]]).to(weight.dtype)
        return grad_x, grad_w, grad_b


def irnn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The fast four-direction scan (see the module docstring): B×C×H×W -> B×4×C×H×W, differentiable."""
    _check(x, weight, bias)
    return _IRNNScan.apply(x, weight, bias)


__all__ = ["DIRECTIONS", "irnn", "irnn_loop"]
