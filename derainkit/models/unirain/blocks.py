"""Restormer building blocks for the UniRain reconstruction (all of it our reconstruction, §1.2).

Why Restormer: the released training scaffolding is PromptIR's nearly line for line, a sibling ablation
script builds its MoE variants by modifying the PromptIR class (a Restormer U-Net), and the reported
24.4 M parameters are close to Restormer's 26 M (reference §1.2). The blocks follow the Restormer paper's
description (Zamir et al., CVPR 2022), written here from its equations:

* ``LayerNorm2d``: layer norm over the channels of each pixel, with a learnt scale and bias.
* ``MDTA`` (multi-Dconv head transposed attention): q, k, v from a 1×1 then a depthwise 3×3 convolution;
  attention across *channels* (a c×c map per head, so its cost is linear in the pixel count): q and k
  are L2-normalised over the pixels, scaled by a learnt per-head temperature, softmax, applied to v,
  then a 1×1 projection.
* ``GDFN`` (gated-Dconv feed-forward): 1×1 to 2·hidden, depthwise 3×3, GELU(x1)·x2, 1×1 back.
* ``TransformerBlock``: x + MDTA(LN(x)), then x + FFN(LN(x)), where the FFN is a dense GDFN or a MoE of
  GDFN experts (:mod:`derainkit.models.unirain.moe`). The MoE placement (the FFN of every encoder and
  decoder block) is our guess: the paper only says the encoder has soft and the decoder hard MoE layers.
* ``Downsample``: 3×3 conv C → C/2, PixelUnshuffle(2) (→ 2C); ``Upsample``: 3×3 conv C → 2C,
  PixelShuffle(2) (→ C/2).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.models.unirain.router import RoutingNoise


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a b×C×H×W map (per pixel), with weight and bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention (channel attention, linear in the number of pixels)."""

    def __init__(self, channels: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=bias)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network with ``hidden`` gated channels."""

    def __init__(self, channels: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)); x + FFN(LN(x)). ``ffn`` is a GDFN or a MoE layer (which takes routing noise)."""

    def __init__(self, channels: int, heads: int, ffn: nn.Module, bias: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.attn = MDTA(channels, heads, bias)
        self.norm2 = LayerNorm2d(channels)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, noise: RoutingNoise | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        y = self.norm2(x)
        return x + (self.ffn(y) if isinstance(self.ffn, GDFN) else self.ffn(y, noise))


class Downsample(nn.Module):
    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(self.conv(x), 2)


class Upsample(nn.Module):
    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 2, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)
