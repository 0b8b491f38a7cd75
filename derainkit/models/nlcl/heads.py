"""Projection heads of NLCL's contrastive losses, and the official initialisation.

Official code facts (reference note §1.3, fixture README): each ``PatchSampleNonlocalOneGroup``
("netF" sampler) holds one MLP per feature layer, Linear(C→256) → ReLU → Linear(256→256), created
lazily from the first batch and then initialised with xavier_normal (gain 0.02), biases 0. Three of
them: ``netGenSample`` (location contrastive loss, on generator features), ``netAdvBackSample`` and
``netAdvRainSample`` (layer contrastive loss, on discriminator features of B̂ and R̂).

Here the heads are explicit modules whose input widths are given up front (``NLCLConfig`` computes
them for a layer list). The official module also L2-normalises inside the sampler; here a head only
projects, and the loss normalises (``derainkit.losses.nlcl`` owns the epsilon quirk Q7). Key names
match the official ones (``mlp_{i}.0.*``, ``mlp_{i}.2.*``).

The official Adv samplers also build ``mlp_4`` for D's layer 11, whose output the loss then drops
(quirk Q1). Nothing depends on it, so the faithful heads have no ``mlp_4``; loading an official
state_dict drops those keys (``derainkit.models.nlcl.weights``), and ``official_init`` still draws
its initial values so that the torch RNG stream matches the official construction order.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class ProjectionHeads(nn.Module):
    """One 2-layer MLP per feature layer: ``heads(i, x)`` projects rows x (n×C_i) to n×width."""

    def __init__(self, in_widths: Sequence[int], width: int = 256) -> None:
        super().__init__()
        self.in_widths = tuple(int(c) for c in in_widths)
        self.width = width
        for i, c in enumerate(self.in_widths):
            setattr(self, f"mlp_{i}", nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width)))

    def __len__(self) -> int:
        return len(self.in_widths)

    def mlp(self, i: int) -> nn.Sequential:
        return getattr(self, f"mlp_{i}")

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_widths[i]:
            raise ValueError(f"head {i} expects width {self.in_widths[i]}, got {tuple(x.shape)}")
        return self.mlp(i)(x)


def xavier_init_(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The official ``init_weights(net, 'xavier', 0.02)``: every Conv*/Linear weight xavier_normal, bias 0,
    visited in ``Module.apply`` order (children before their parent)."""

    def visit(m: nn.Module) -> None:
        name = type(m).__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.xavier_normal_(m.weight.data, gain=gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)

    module.apply(visit)
    return module


def official_heads_init(in_widths: Sequence[int], width: int, gain: float = 0.02,
                        discarded_widths: Sequence[int] = ()) -> ProjectionHeads:
    """Heads built and initialised in the official order: all default-initialised MLPs (kept ones, then
    the discarded ones), then xavier over the kept ones in order, then over the discarded ones."""
    heads = ProjectionHeads(in_widths, width)
    dropped = [nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width)) for c in discarded_widths]
    xavier_init_(heads, gain)
    for mlp in dropped:
        xavier_init_(mlp, gain)
    return heads
