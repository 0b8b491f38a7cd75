"""Patch extraction and folding with the official MSGNN padding rule.

MSGNN (via pyinn's im2col) zero-pads every feature map so that (size - l) is divisible by s, putting the
smaller half of the padding on top/left, then cuts l×l patches with stride s. `extract_patches` is that
operation written with `F.unfold` (same (c, kh, kw) element order, patch index i*n2 + j), and
`fold_patches` is the inverse (`patch2im`): `F.fold` sums overlaps, dividing by `fold(ones)` averages them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from derainkit.errors import DerainkitError

__all__ = ["pad_amounts", "patch_grid", "extract_patches", "fold_patches"]


def _check_ls(l: int, s: int) -> None:
    if not (isinstance(l, int) and isinstance(s, int)) or l < 1 or s < 1:
        raise DerainkitError(f"patch size l and stride s must be positive integers, got l={l!r}, s={s!r}")


def pad_amounts(size: int, l: int, s: int) -> tuple[int, int]:
    """(before, after) zero padding of one axis of length `size` (official rule: pad = (-(size-l)) % s)."""
    _check_ls(l, s)
    if size < 1:
        raise DerainkitError(f"cannot cut patches from an axis of length {size}")
    pad = (-(size - l)) % s
    before = pad // 2
    after = pad - before
    if size + pad < l:
        # the official rule never pads beyond the next multiple of s, so a tiny axis yields no patch at all
        raise DerainkitError(f"axis of length {size} is too small for patch size {l} with stride {s} "
                             f"(padded length {size + pad} < {l})")
    return before, after


def patch_grid(h: int, w: int, l: int, s: int) -> tuple[int, int]:
    """Patch grid (n1, n2) of an h×w map after the official padding."""
    t, b = pad_amounts(h, l, s)
    lf, r = pad_amounts(w, l, s)
    return (h + t + b - l) // s + 1, (w + lf + r - l) // s + 1


def _check_map(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DerainkitError(f"expected a b×c×H×W tensor, got shape {shape}")


def extract_patches(x: Tensor, l: int, s: int) -> tuple[Tensor, tuple[int, int]]:
    """Cut x (b×c×H×W) into l×l patches with stride s.

    Returns (patches b×n×e, (n1, n2)) with e = c*l*l in (c, kh, kw) order and patch index i*n2 + j —
    exactly the official `im2patch` followed by permute(0, 4, 5, 1, 2, 3).
    """
    _check_map(x)
    _check_ls(l, s)
    b, c, h, w = x.shape
    t, bo = pad_amounts(h, l, s)
    lf, r = pad_amounts(w, l, s)
    n1, n2 = patch_grid(h, w, l, s)
    if t or bo or lf or r:
        x = F.pad(x, (lf, r, t, bo))
    cols = F.unfold(x, kernel_size=l, stride=s)  # b × e × n
    # contiguous b×n×e: every consumer (kNN GEMMs, gathers) reads whole patch vectors
    return cols.transpose(1, 2).contiguous(), (n1, n2)


def fold_patches(patches: Tensor, out_hw: tuple[int, int], l: int, s: int, average: bool = True) -> Tensor:
    """Inverse of `extract_patches`: b×n×e patches -> b×c×H×W map of size `out_hw`.

    Overlapping contributions are summed by `F.fold`; with `average=True` they are divided by the overlap
    count (official `patch2im`), so extract→fold is the identity whenever every pixel is covered (s <= l).
    Pixels covered by no patch (only possible when s > l) are 0.
    """
    _check_ls(l, s)
    if not isinstance(patches, Tensor) or patches.dim() != 3:
        shape = tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__
        raise DerainkitError(f"expected patches of shape b×n×e, got {shape}")
    h, w = (int(v) for v in out_hw)
    b, n, e = patches.shape
    if e % (l * l):
        raise DerainkitError(f"patch length e={e} is not a multiple of l*l={l * l}")
    n1, n2 = patch_grid(h, w, l, s)
    if n != n1 * n2:
        raise DerainkitError(f"{n} patches do not match the {n1}×{n2} grid of a {h}×{w} map (l={l}, s={s})")
    t, bo = pad_amounts(h, l, s)
    lf, r = pad_amounts(w, l, s)
    hp, wp = h + t + bo, w + lf + r
    out = F.fold(patches.transpose(1, 2), output_size=(hp, wp), kernel_size=l, stride=s)
    if average and s < l:  # with s >= l patches never overlap: every count is 0 or 1
        ones = torch.ones(1, l * l, n, dtype=patches.dtype, device=patches.device)
        count = F.fold(ones, output_size=(hp, wp), kernel_size=l, stride=s)
        out = out / count.clamp_min(1)  # clamp: uncovered pixels (s > l) stay 0 instead of NaN
    return out[:, :, t:t + h, lf:lf + w]
