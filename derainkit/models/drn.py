"""DRN, the dual recursive network for fast image deraining (csdwren/DRN @9f2bf50; from PReNet's group).

The repository's README titles it "Dual Recursive Network for Fast Image Deraining" (DRN): a ResNet
of only two residual blocks, unfolded recursively over stages (inter) and, inside each stage,
recursively over its two blocks (intra). It is not the "bilateral recurrent network" (BRN, Ren et al.,
"Single image deraining using bilateral recurrent network", TIP 2020), a different two-stream network;
the kit's issue and shared README name it that way by mistake.

Architecture, from the official ``network.py`` (facts taken from it, code written here), 10,595
parameters with the defaults:

- each of ``inter_iter`` stages (7) sees the rainy image concatenated with the previous estimate
  (6 channels; the first stage sees the rainy image twice) and applies conv3×3 6→16 + ReLU (``conv0``);
- then ``intra_iter`` times (7) the same two residual blocks in turn, each conv3×3-ReLU-conv3×3-ReLU
  (``res_conv1``, ``res_conv2``), added to its input and passed through a ReLU;
- conv3×3 16→3 (``conv``), added to the rainy image: the stage's estimate.

No state is carried between stages other than the estimate. Inputs and outputs are **RGB** in
[0, 1] (the official ``test_Rain100L.py`` reads with OpenCV and converts BGR→RGB, divides by 255);
the output is not clamped here. The official test script clamps to [0, 1] and saves
``np.uint8(255 * out)``, which truncates (``official_quantize="trunc"``), and uses inter 7 / intra 7.
Official weights: ``logs/Rain100{L,H}_inter7_intra7/pretrained/net_latest.pth`` (plain state_dicts
with the keys above), trained on RainTrainL / RainTrainH.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

# The official training recipe as run-config overrides (train_Rain100L.py, DerainDataset.py): Adam at
# 1e-3, MultiStepLR at epochs 30, 50, 80 of 100 with gamma 0.5, batch 16, 100×100 patches (stride 80,
# each image also flipped: 15 × 2 = 30 patches per RainTrainL pair, 6,000 per epoch, 375 iterations
# per epoch, 37,500 in all). The loss is negative SSIM over all stages (weights 0.1, 0.2, ..., 0.7 for
# stages 1..7, plus 1 more on the last): derainkit.losses.peers.drn_loss, which needs every stage's
# output (forward(x, return_stages=True)); "loss" names it as the lead registers it.
RECIPE: dict[str, Any] = {
    "loss": "drn_stagewise_ssim",
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_milestones": [0.3, 0.5, 0.8],
    "lr_gamma": 0.5,
    "crop": 100,
    "batch": 16,
    "iterations": 37500,
}


@dataclass(frozen=True)
class DRNConfig:
    inter_iter: int = 7  # stages
    intra_iter: int = 7  # recursions of the two residual blocks inside a stage
    channels: int = 16

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="DRNConfig.")
        if self.inter_iter < 1 or self.intra_iter < 1 or self.channels < 1:
            raise ConfigError(f"invalid DRN config {self}: inter_iter, intra_iter and channels must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DRNConfig":
        return strict_from_dict(cls, d, "DRN config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _res_block(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU())


class DRN(nn.Module):
    """Module names follow the official ones, so official state_dicts load without a key map."""

    def __init__(self, config: DRNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DRNConfig()
        c = cfg.channels
        self.conv0 = nn.Sequential(nn.Conv2d(6, c, 3, padding=1), nn.ReLU())
        self.res_conv1 = _res_block(c)
        self.res_conv2 = _res_block(c)
        self.conv = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, rainy: torch.Tensor, return_stages: bool = False) -> torch.Tensor | list[torch.Tensor]:
        if rainy.dim() != 4 or rainy.shape[1] != 3:
            raise ValueError(f"DRN expects b×3×H×W RGB input, got {tuple(rainy.shape)}")
        x, stages = rainy, []
        for _ in range(self.config.inter_iter):
            x = self.conv0(torch.cat([rainy, x], dim=1))
            for _ in range(self.config.intra_iter):
                x = F.relu(self.res_conv1(x) + x)
                x = F.relu(self.res_conv2(x) + x)
            x = self.conv(x) + rainy
            stages.append(x)
        return stages if return_stages else x


def load_drn_weights(model: DRN, path: str | Path) -> DRN:
    """Load official DRN weights (``net_latest.pth``, plain or DataParallel) or kit weights, strict keys."""
    return load_weights_file(model, path, "DRN")


__all__ = ["DRN", "DRNConfig", "RECIPE", "load_drn_weights"]
