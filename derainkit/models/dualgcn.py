"""DualGCN (Fu, Qi, Zha, Zhu, Ding, AAAI 2021): rain streak removal via a dual graph convolutional network.

Rebuilt in PyTorch from the official TensorFlow graph (the ``Inference`` function of
``paper/2021/AAAI/code/model.py`` on xueyangfu.github.io, the code released with the paper's trained
models). Its parameter count is 2,731,071 (the paper's 2.73 M). A widely used PyTorch port has about
0.85 M parameters and is a different network; nothing here follows it.

* Shallow features: two 3×3 convolutions (3→72, 72→72, no activation), F₀ and F₁.
* Eleven *basic units* in a symmetric encoder–decoder without resampling: five encoder units, a middle
  unit, five decoder units; decoder unit d first takes the 1×1 convolution (144→72, no activation) of
  [previous output, encoder unit d's output].
* A basic unit: spatial GCN → multi-scale dilated convolutions → channel GCN, plus the unit input:
  - spatial GCN (C → C/2 projections θ, ν, ξ by 1×1 convs): ν and ξ are each soft-maxed over *all*
    H·W·C/2 values of an image together; A = νᵀξ (C/2 × C/2); output = 1×1 conv(θ A) (C/2 → C) + input;
  - dilated module: two 3×3 conv+ReLU at dilation 1 and two at dilation 3 (each pair chained), the
    GCN output and the four results concatenated (5C) → 1×1 conv + ReLU (→ C);
  - channel GCN: ζ = 1×1 conv to C/2, κ = 1×1 conv to C/4; node features F = κᵀζ (C/4 × C/2), soft-maxed
    over all entries; F + Linear_{C/2}(F) → ReLU, then a linear map over the C/4 nodes; back to pixels
    ζ·F (H·W × C/4) → 1×1 conv (C/4 → C) + input.
* Reconstruction: [last decoder output, F₁] → 3×3 conv (144→72) + ReLU, + F₀, → 3×3 conv (72→3) = the
  residual; the output is input + residual.

The graph's "linear maps" are 1×1 convolutions on reshaped tensors in the TF code; they are ``nn.Linear``
here (same weights and biases). The softmax over the whole feature map (not per node) is the code's; the
paper's text was not available here to compare, so every detail above is the released graph's. Every layer keeps the image size: any H×W works (odd included), and the cost of the
spatial GCN is linear in H·W. Initialisation as ``tf.layers.conv2d``: Glorot-uniform kernels, zero biases.

Input and output: RGB in [0, 1], as in the official ``test.py`` (``decode_png / 255``); it clips the
output and saves ``np.uint8(255·y)`` (truncation: ``official_quantize="trunc"``). Not clamped here.

Training: the released code has no training script. The recipe below is the paper's set-up as two
independent re-implementations state it (L1 loss, Adam at 1e-4, batch 10, 100×100 crops, 300 epochs:
biubiubiiu/derain-toolbox ``configs/dual_gcn/dual_gcn_c72n11.py`` and XiaoXiao-Woo/derain
``models/compared_CNN/FuGCN/train.py``); the paper's text was not available to check it against.
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

PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "small": {"channels": 16, "depth": 2},  # 5 basic units of 16 channels, ~50 k parameters
}

RECIPE: dict[str, Any] = {  # see the module docstring for the sources (no official training script)
    "loss": "l1",
    "optimizer": "adam",
    "lr": 1e-4,
    "lr_milestones": (),  # constant learning rate
    "lr_gamma": 0.1,  # unused without milestones
    "crop": 100,
    "batch": 10,
    "epochs": 300,
}


@dataclass(frozen=True)
class DualGCNConfig:
    channels: int = 72  # Inference(images, channels=72)
    depth: int = 5  # encoder units (and decoder units); with the middle unit 2·depth + 1 = 11 basic units

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="DualGCNConfig.")
        if self.channels < 4 or self.channels % 4 or self.depth < 0:
            raise ConfigError(f"invalid DualGCN config {self}: channels must be a multiple of 4 (>= 4), depth >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DualGCNConfig":
        """Strict: unknown keys raise ConfigError. ``preset`` (official|small) fills the keys not given."""
        return strict_from_dict(cls, d, "DualGCN config", sort_valid=True, presets=PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _softmax_all(x: torch.Tensor) -> torch.Tensor:
    """Softmax over every entry of each batch element together (the TF code reshapes to [b, -1] first)."""
    return F.softmax(x.flatten(1), dim=1).view_as(x)


class SpatialGCN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.theta, self.nu, self.xi = (nn.Conv2d(c, c // 2, 1) for _ in range(3))
        self.out = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # b × C/2 × HW
        nu, xi = _softmax_all(self.nu(x).flatten(2)), _softmax_all(self.xi(x).flatten(2))
        adjacency = nu @ xi.transpose(1, 2)  # b × C/2 × C/2 (the TF code's matmul(nu, xi, transpose_a))
        af = adjacency.transpose(1, 2) @ theta  # (theta · A) per pixel, kept channel-first
        return self.out(af.view(b, -1, h, w)) + x


class ChannelGCN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.zeta, self.kappa = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 4, 1)
        self.node_conv = nn.Linear(c // 2, c // 2)  # TF: 1x1 conv over the C/2 axis of the N x C/2 node map
        self.channel_conv = nn.Linear(c // 4, c // 4)  # TF: 1x1 conv over the N = C/4 axis after the transpose
        self.out = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        zeta = self.zeta(x).flatten(2)  # b × C/2 × HW
        kappa = self.kappa(x).flatten(2)  # b × C/4 × HW
        nodes = _softmax_all(kappa @ zeta.transpose(1, 2))  # b × N × C/2, N = C/4
        nodes = F.relu(nodes + self.node_conv(nodes))
        nodes = self.channel_conv(nodes.transpose(1, 2))  # b × C/2 × N
        pixels = nodes.transpose(1, 2) @ zeta  # b × N × HW (= zeta · F, channel-first)
        return self.out(pixels.view(b, -1, h, w)) + x


class BasicUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.spatial = SpatialGCN(c)
        self.d1a, self.d1b = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.d3a, self.d3b = nn.Conv2d(c, c, 3, 1, 3, dilation=3), nn.Conv2d(c, c, 3, 1, 3, dilation=3)
        self.fuse = nn.Conv2d(5 * c, c, 1)
        self.channel = ChannelGCN(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spatial(x)
        a = F.relu(self.d1a(s))
        d = F.relu(self.d3a(s))
        local = F.relu(self.fuse(torch.cat([s, a, F.relu(self.d1b(a)), d, F.relu(self.d3b(d))], 1)))
        return self.channel(local) + x


class DualGCN(nn.Module):
    """DualGCN: ``forward(rgb)`` takes and returns b×3×H×W RGB in [0, 1] (see the module docstring)."""

    def __init__(self, config: DualGCNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DualGCNConfig()
        c = cfg.channels
        self.basic0, self.basic1 = nn.Conv2d(3, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.encoders = nn.ModuleList(BasicUnit(c) for _ in range(cfg.depth))
        self.middle = BasicUnit(c)
        self.skips = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for _ in range(cfg.depth))
        self.decoders = nn.ModuleList(BasicUnit(c) for _ in range(cfg.depth))
        self.reconstruct = nn.Conv2d(2 * c, c, 3, 1, 1)
        self.tail = nn.Conv2d(c, 3, 3, 1, 1)
        for m in self.modules():  # tf.layers defaults: glorot_uniform kernels, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"DualGCN expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        f0 = self.basic0(rgb)
        f1 = self.basic1(f0)
        x, skips = f1, []
        for unit in self.encoders:
            x = unit(x)
            skips.append(x)
        x = self.middle(x)
        for skip, reduce, unit in zip(reversed(skips), self.skips, self.decoders):
            x = unit(reduce(torch.cat([x, skip], 1)))
        x = F.relu(self.reconstruct(torch.cat([x, f1], 1))) + f0
        return rgb + self.tail(x)


def load_dualgcn_weights(model: DualGCN, path: str | Path) -> DualGCN:
    """Load kit weights (``.safetensors`` export or kit checkpoint) strictly; CheckpointError names the file."""
    return load_weights_file(model, path, "DualGCN")


__all__ = ["DualGCN", "DualGCNConfig", "PRESETS", "RECIPE", "load_dualgcn_weights"]
