"""Training losses of the Table 1 peers (part B) that are not one of the kit's four named losses.

``mspfn_loss(pred, target)``  MSPFN's official objective (``model/MSPFN.py``, ``inference_losses``):
    Charbonnier(Ŷ, Y) + 0.05 · Charbonnier(Lap(Ŷ), Lap(Y)), with Charbonnier(a, b) = mean √((a − b)² + ε²),
    ε = 1e-3, and Lap the 3×3 Laplacian (8 at the centre, −1 around it) applied per colour channel with
    zero padding ('SAME'), all on the network's own [−1, 1] scale. It takes the kit's [0, 1] tensors and
    maps them to that scale first (2x − 1), so the value and the ε are the official ones (the Laplacian's
    zero padding makes the border terms scale-dependent, so this is not just a factor of 2).

``rcdnet_stage_loss(stages, rainy, clean)``  RCDNet's official multi-stage objective (``trainer.py``),
    over what ``RCDNet.forward(x, return_stages=True)`` returns (B⁰, S stage backgrounds + the refined
    one, S rain layers), with the rain target ``rainy − clean``:
    Σ_{j<S} [0.1·MSE(B_j, clean) + 0.1·MSE(R_j, rainy − clean)] + MSE(B_final, clean)
    + 0.9·MSE(R_S, rainy − clean) + 0.1·MSE(B⁰, clean), on the official 0–255 scale (``scale=255``:
    every MSE × 255²). It does not have the ``(pred, target)`` signature: the paired task has to call
    the model with ``return_stages=True`` and pass the rainy input.

Every loss is computed in float32 whatever the autocast dtype of its inputs (as ``derainkit.losses``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MSPFN_EPS = 1e-3  # inference_mse_loss: sqrt((a - b)**2 + (1e-3)**2)
MSPFN_EDGE_WEIGHT = 0.05  # train_loss = 1*derain_loss + 0.05*edge_loss
_LAPLACIAN = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred.float(), target.float()


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = MSPFN_EPS) -> torch.Tensor:
    """mean √((a − b)² + ε²)."""
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 3×3 Laplacian with zero padding (MSPFN's ``Laplacian``: a channel-diagonal 3×3×C×C kernel)."""
    c = x.shape[1]
    kernel = _LAPLACIAN.to(device=x.device, dtype=x.dtype).expand(c, 1, 3, 3)
    return F.conv2d(x, kernel, padding=1, groups=c)


def mspfn_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSPFN's Charbonnier + 0.05·edge Charbonnier, on the [−1, 1] scale of images given in [0, 1]."""
    pred, target = _check(pred, target)
    p, t = pred * 2.0 - 1.0, target * 2.0 - 1.0
    return charbonnier(p, t) + MSPFN_EDGE_WEIGHT * charbonnier(laplacian(p), laplacian(t))


def rcdnet_stage_loss(stages: Any, rainy: torch.Tensor, clean: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """RCDNet's official loss over ``RCDNetStages`` (all in [0, 1]); ``scale=255`` gives the official value."""
    rainy, clean = _check(rainy, clean)
    rain = rainy - clean
    backgrounds = [b.float() for b in stages.backgrounds]
    rains = [r.float() for r in stages.rain_layers]
    s = len(rains)
    if len(backgrounds) != s + 1:
        raise ValueError(f"rcdnet_stage_loss: expected {s + 1} backgrounds for {s} rain layers, got {len(backgrounds)}")
    loss = 0.1 * F.mse_loss(stages.b0.float(), clean)
    for j in range(s):
        loss = loss + 0.1 * F.mse_loss(backgrounds[j], clean) + 0.1 * F.mse_loss(rains[j], rain)
    loss = loss + F.mse_loss(backgrounds[-1], clean) + 0.9 * F.mse_loss(rains[-1], rain)
    return loss * (scale * scale)


# Losses with the kit's (pred, target) signature, to be registered in derainkit.losses.LOSSES by name.
PEER_LOSSES = {"mspfn": mspfn_loss}

__all__ = ["MSPFN_EDGE_WEIGHT", "MSPFN_EPS", "PEER_LOSSES", "charbonnier", "laplacian", "mspfn_loss",
           "rcdnet_stage_loss"]
