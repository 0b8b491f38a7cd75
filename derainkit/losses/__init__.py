"""Training losses by name: ``get_loss("ssim")(pred, target) -> scalar tensor`` (lower is better).

``ssim``  −SSIM with the zero-padded 11×11 Gaussian (σ 1.5) window of the official MSGNN code
          (``derainkit.metrics.protocols.ssim_zero_padded``); the MSGNN paper's loss and the default.
``l1``    mean absolute error.
``mse``   mean squared error.
``psnr``  −PSNR in dB of the batch (data range 1), i.e. 10·log10(MSE); the MSE is taken over the whole
          batch, so under DistributedDataParallel the per-rank losses are not exactly the global one.

Every loss is computed in float32 whatever the autocast dtype of the prediction, so a bf16 forward
does not lose the small SSIM differences the gradient depends on.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.metrics.protocols import ssim_zero_padded

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PSNR_EPS = 1e-10  # keeps log10 finite when the prediction is exact


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred.float(), target.float()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−SSIM (official MSGNN loss: Gaussian 11/1.5, zero padding, C1=0.01², C2=0.03²); no clamp on ``pred``."""
    pred, target = _check(pred, target)
    return -ssim_zero_padded(pred, target)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred, target = _check(pred, target)
    return F.l1_loss(pred, target)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred, target = _check(pred, target)
    return F.mse_loss(pred, target)


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−PSNR (dB, data range 1) of the batch: 10·log10(MSE + ε)."""
    pred, target = _check(pred, target)
    return 10.0 * torch.log10(F.mse_loss(pred, target) + _PSNR_EPS)


LOSSES: dict[str, LossFn] = {"ssim": ssim_loss, "l1": l1_loss, "mse": mse_loss, "psnr": psnr_loss}


def get_loss(name: str) -> LossFn:
    """The loss function registered as ``name``; ConfigError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None


__all__ = ["LOSSES", "LossFn", "get_loss", "l1_loss", "mse_loss", "psnr_loss", "ssim_loss"]
