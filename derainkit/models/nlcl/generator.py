"""NLCL's background and rain generators (one architecture, two sets of weights).

Official code facts (reference note §1.1): ``networks.Generator(3, 3)`` is a plain full-resolution
residual CNN, not CycleGAN's ResnetGenerator. Its ``gen`` Sequential holds

    0       Conv 3→32, 3×3, zero padding 1
    1..16   residual blocks: x + IN(conv(ReLU(IN(conv(x)))))   (MUNIT-style, the *second* ResBlock
            definition in the official networks.py, which shadows the first)
    17      tail: conv → IN → ReLU → conv (no norm after the last conv)
    18      Conv 32→3, 3×3; no output activation, no global skip

InstanceNorm has no affine parameters and no running statistics (eps 1e-5), so every output depends on
the statistics of the *whole frame*; see ``derainkit.infer.frame_norm`` for exact tiled inference.
Module names reproduce the official state_dict keys (``gen.0.*``, ``gen.{k}.model.{0,1}.conv.*``,
``gen.17.conv.{0,3}.*``, ``gen.18.*``), so official checkpoints load with ``strict=True``. The
official blocks pad with an explicit ZeroPad2d before an unpadded conv; a padded conv is the same
arithmetic.

Default PyTorch initialisation (the official generators skip ``init_net``). I/O range [-1, 1].
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from derainkit.models.nlcl.config import NLCLConfig


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=1, padding=1)


class ConvUnit(nn.Module):
    """Conv 3×3 → InstanceNorm → optional ReLU (the official ``Conv2dBlock`` as the blocks use it)."""

    def __init__(self, channels: int, relu: bool) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)
        self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return torch.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(ConvUnit(channels, relu=True), ConvUnit(channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.model(x)


class Tail(nn.Module):
    """conv → IN → ReLU → conv; keys ``conv.0`` and ``conv.3`` as in the official ``conv_ycf``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3(channels, channels),
                                  nn.InstanceNorm2d(channels, affine=False, track_running_stats=False),
                                  nn.ReLU(), _conv3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NLCLGenerator(nn.Module):
    """B̂ = G_B(O) or R̂ = G_R(O), in the official [-1, 1] range (no clamp)."""

    def __init__(self, config: NLCLConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NLCLConfig()
        layers: list[nn.Module] = [_conv3(3, cfg.channels)]
        layers += [ResidualBlock(cfg.channels) for _ in range(cfg.res_blocks)]
        layers += [Tail(cfg.channels), _conv3(cfg.channels, 3)]
        self.gen = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"NLCL generator expects b×3×H×W input in [-1, 1], got {tuple(x.shape)}")
        return self.gen(x)

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of ``gen[i]`` for each i in ``layers`` (sorted), stopping after the last one: the
        location-contrastive loss's encoder (official ``forward(x, layers, encode_only=True)``)."""
        wanted = sorted(set(layers))
        if list(layers) != wanted:
            raise ValueError(f"encode layers must be increasing and distinct, got {list(layers)}")
        feats = []
        for i, layer in enumerate(self.gen):
            x = layer(x)
            if i in wanted:
                feats.append(x)
                if i == wanted[-1]:
                    break
        return feats

    def stages(self) -> list[nn.Module]:
        """The ``gen`` positions in order; each is a function of the previous one's output only."""
        return list(self.gen)
