"""Gaussian pyramid step equal to ``cv2.pyrDown`` (default border), in torch.

The official data loader builds O½ and O¼ with ``cv2.pyrDown`` on the HWC float32 crop (§3.3 of the
reference note). This version is differentiable, batched and device-agnostic, and matches OpenCV
within ~2.4e-7 (tested against shared/fixtures/msgnn/pyrdown.pt).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_KERNEL_1D = (1.0, 4.0, 6.0, 4.0, 1.0)
PYR_MIN_SIDE = 3  # reflect-101 padding of 2 needs at least 3 pixels per side


def pyr_down_size(n: int) -> int:
    """Output length of one pyrDown step on a side of n pixels (cv2: (n + 1) // 2)."""
    return (n + 1) // 2


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """``cv2.pyrDown`` of a b×c×H×W tensor -> b×c×((H+1)//2)×((W+1)//2).

    Reflect-101 padding of 2 (torch's ``reflect``), separable [1,4,6,4,1]/16 blur, even rows/cols.
    """
    if x.dim() != 4:
        raise ValueError(f"pyr_down expects b×c×H×W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < PYR_MIN_SIDE or w < PYR_MIN_SIDE:
        raise ValueError(f"pyr_down needs H, W >= {PYR_MIN_SIDE} for reflect-101 padding of 2, got {h}×{w}")
    b, c = x.shape[:2]
    k = torch.tensor(_KERNEL_1D, dtype=x.dtype, device=x.device) / 16.0
    y = F.pad(x.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="reflect")
    # Only the even output rows/cols are kept, so compute just those with stride 2.
    y = F.conv2d(y, k.view(1, 1, 5, 1), stride=(2, 1))
    y = F.conv2d(y, k.view(1, 1, 1, 5), stride=(1, 2))
    return y.reshape(b, c, y.shape[-2], y.shape[-1])


def pyramid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(O½, O¼) = (pyrDown(O), pyrDown(pyrDown(O))), as the official loader computes them."""
    half = pyr_down(x)
    return half, pyr_down(half)
