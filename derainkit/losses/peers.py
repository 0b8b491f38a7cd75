"""The training losses of the Table 1 peers whose papers use none of the four built-in losses.

Each is computed in float32 (like :mod:`derainkit.losses`), lower is better, and uses the kit's SSIM
(``ssim_zero_padded``: Gaussian 11×11, σ 1.5, zero padding, C1 = 0.01², C2 = 0.03²), which is the
"pytorch-ssim" code every one of these official repositories ships (``cal_ssim.py`` / ``SSIM.py``).

Image losses, signature ``(pred, target) -> 0-d tensor`` (registrable in ``derainkit.losses.LOSSES``):

``spanet_mse_ssim``   SPANet paper: MSE + (1 − SSIM) on the derained image.
``spanet_l1_ssim``    SPANet official ``main.py``: L1 + (1 − SSIM) (the code uses L1 where the paper
                      says MSE).

Losses that need more than the final output (the paired task would have to pass them):

``spanet_attention_loss(attention, rainy, clean)``  SPANet's third term, in both paper and code: MSE
                      between the first SAM's map (``SPANet(..., return_attention=True)``) and a
                      binary rain mask. The official mask (``dataset.py``) is 1 wherever the 8-bit
                      rainy and clean pixels differ in any channel (uint8 subtraction wraps, so any
                      difference sums to a positive number, clipped to 1): :func:`spanet_rain_mask`.
``drn_loss(stages, target)``  DRN ``train_Rain100L.py``: −SSIM(last) − Σ_{i=1..S} 0.1·i·SSIM(stage i),
                      i.e. the last stage weighs 1 + 0.1·S; over ``DRN(x, return_stages=True)``.
``rescan_loss(stages, target)``  RESCAN ``train.py``: Σ_s MSE(R_s, O − B) over the stages' rain layers,
                      which equals Σ_s MSE(O − R_s, B), the stages' derained images
                      (``RESCAN(x, return_stages=True)``) against the clean image.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from derainkit.metrics.protocols import ssim_zero_padded


def _f32(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred.float(), target.float()


def spanet_mse_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SPANet paper's image loss: MSE + (1 − SSIM)."""
    pred, target = _f32(pred, target)
    return F.mse_loss(pred, target) + (1.0 - ssim_zero_padded(pred, target))


def spanet_l1_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SPANet official code's image loss: L1 + (1 − SSIM)."""
    pred, target = _f32(pred, target)
    return F.l1_loss(pred, target) + (1.0 - ssim_zero_padded(pred, target))


def spanet_rain_mask(rainy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The official attention target: b×H×W, 1.0 where the 8-bit pixels differ in any channel, else 0.0.

    ``rainy``/``clean`` are b×3×H×W in [0, 1] (read from 8-bit files); they are requantised to the
    8-bit levels the official code compares."""
    levels = lambda t: torch.round(t.float().clamp(0, 1) * 255)  # noqa: E731
    return (levels(rainy) != levels(clean)).any(dim=1).float()


def spanet_attention_loss(attention: torch.Tensor, rainy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """MSE between SPANet's first attention map (b×1×H×W) and :func:`spanet_rain_mask`."""
    mask = spanet_rain_mask(rainy, clean)
    if attention.dim() != 4 or attention.shape[1] != 1 or attention.shape[2:] != mask.shape[1:]:
        raise ValueError(f"attention map {tuple(attention.shape)} does not fit images {tuple(rainy.shape)}")
    return F.mse_loss(attention[:, 0].float(), mask)


def drn_loss(stages: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """DRN's stage-weighted negative SSIM (weights 0.1, 0.2, …, and 1 more on the last stage)."""
    if not stages:
        raise ValueError("drn_loss needs at least one stage output")
    ssim = [ssim_zero_padded(*_f32(s, target)) for s in stages]
    return -ssim[-1] - sum(0.1 * (i + 1) * s for i, s in enumerate(ssim))


def rescan_loss(stages: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """RESCAN's sum over stages of the MSE of each stage's derained image."""
    if not stages:
        raise ValueError("rescan_loss needs at least one stage output")
    return sum(F.mse_loss(*_f32(s, target)) for s in stages)


__all__ = ["drn_loss", "rescan_loss", "spanet_attention_loss", "spanet_l1_ssim", "spanet_mse_ssim",
           "spanet_rain_mask"]
