"""Training losses by name: ``get_loss("ssim")(pred, target) -> scalar tensor`` (lower is better).

``ssim``  −SSIM with the zero-padded 11×11 Gaussian (σ 1.5) window of the official MSGNN code
          (``derainkit.metrics.protocols.ssim_zero_padded``); the MSGNN paper's loss and the default.
``l1``    mean absolute error.
``mse``   mean squared error.
``psnr``  −PSNR in dB of the batch (data range 1), i.e. 10·log10(MSE); the MSE is taken over the whole
          batch, so under DistributedDataParallel the per-rank losses are not exactly the global one.

Peers' own losses (their recipes name them): ``spanet`` (image + attention), ``spanet_mse_ssim``,
``spanet_l1_ssim``, ``drn_stagewise_ssim``, ``rescan_stagewise_mse``, ``mspfn``, ``rcdnet_stages``.
The multi-output ones are :class:`ModelLoss` objects saying what the model must return.

NLCL's unpaired objective (adversarial + contrastive) is not a (pred, target) loss: it lives in
``derainkit.losses.nlcl`` and the ``nlcl`` training task calls it; UniRain's per-type reweighting is in
``derainkit.losses.reweighting``.

Every loss is computed in float32 whatever the autocast dtype of the prediction, so a bf16 forward
does not lose the small SSIM differences the gradient depends on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

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


@dataclass(frozen=True)
class ModelLoss:
    """A loss over more than the final image: what the paired task must ask the model for
    (``forward_kwargs``, e.g. ``return_stages=True``) and whether the loss also needs the rainy input.
    Called as ``loss(output, clean, rainy)``."""

    fn: Callable[..., torch.Tensor]
    forward_kwargs: Mapping[str, Any]
    needs_rainy: bool = False
    description: str = ""

    def __call__(self, output: Any, target: torch.Tensor, rainy: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(output, target, rainy) if self.needs_rainy else self.fn(output, target)


def _spanet_objective(output: Any, clean: torch.Tensor, rainy: torch.Tensor) -> torch.Tensor:
    from derainkit.losses.peers import spanet_attention_loss, spanet_mse_ssim

    image, attention = output
    return spanet_mse_ssim(image, clean) + spanet_attention_loss(attention, rainy, clean)


def _rcdnet_objective(output: Any, clean: torch.Tensor, rainy: torch.Tensor) -> torch.Tensor:
    from derainkit.losses.peers_b import rcdnet_stage_loss

    return rcdnet_stage_loss(output, rainy, clean)


def _peer_losses() -> dict[str, LossFn | ModelLoss]:
    from derainkit.losses import peers, peers_b

    stages = {"return_stages": True}
    return {
        "spanet_mse_ssim": peers.spanet_mse_ssim,  # SPANet paper's image loss (MSE + 1 − SSIM)
        "spanet_l1_ssim": peers.spanet_l1_ssim,  # SPANet official code's image loss
        "spanet": ModelLoss(_spanet_objective, {"return_attention": True}, needs_rainy=True,
                            description="SPANet: MSE + 1 − SSIM on the image + MSE of the attention map"),
        "drn_stagewise_ssim": ModelLoss(peers.drn_loss, stages, description="DRN: stage-weighted −SSIM"),
        "rescan_stagewise_mse": ModelLoss(peers.rescan_loss, stages, description="RESCAN: MSE of every stage"),
        "mspfn": peers_b.mspfn_loss,  # Charbonnier + 0.05 · edge Charbonnier
        "rcdnet_stages": ModelLoss(_rcdnet_objective, stages, needs_rainy=True,
                                   description="RCDNet: every stage's background and rain layer (official weights)"),
    }


LOSSES: dict[str, LossFn | ModelLoss] = {"ssim": ssim_loss, "l1": l1_loss, "mse": mse_loss, "psnr": psnr_loss,
                                         **_peer_losses()}


def get_loss(name: str) -> LossFn:
    """The loss function registered as ``name``; ConfigError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None


__all__ = ["LOSSES", "LossFn", "ModelLoss", "get_loss", "l1_loss", "mse_loss", "psnr_loss", "ssim_loss"]
