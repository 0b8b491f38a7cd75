"""The per-image noisy router of UniRain's MoE layers, and where its noise comes from.

Paper (reference §1.1): ``R = σ(W(φ(x + ε)))`` with φ global average pooling over H×W, W a linear map
to E logits, σ the softmax, ε ~ N(0, s²). Because φ pools over the whole image, routing is **per image**,
not per pixel. The noise is drawn in training only (``module.training``); in eval the router is a
deterministic function of the image.

Where ε is added: the equation adds it to the feature map before pooling; one summary says it is added
to the pooled vector. Pooling i.i.d. N(0, s²) pixels gives exactly N(0, s²/(H·W)) per channel, so
``noise_site="input"`` is implemented as pooled noise of standard deviation s/sqrt(H·W): the same
distribution, without drawing H·W·C numbers. ``"pooled"`` (default) adds N(0, s²) to the pooled vector.
The noise scale s (default 1/E) is our guess; the paper gives none.

Noise source (:class:`RoutingNoise`): either one seeded ``torch.Generator`` for the whole batch, or one
per image seeded from an integer each (``from_seeds``). The training task uses per-image seeds that
are a pure function of (run seed, iteration, slot), so the noise an image gets does not depend on the
batch it shares, the number of DDP ranks, or whether the run was resumed. With no source given, a model
in training mode draws from torch's global RNG.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn


class RoutingNoise:
    """Gaussian draws for the routers of one forward pass: per image (``from_seeds``) or per batch."""

    def __init__(self, generators: Sequence[torch.Generator] | torch.Generator | None = None) -> None:
        if isinstance(generators, torch.Generator):
            self.per_image: list[torch.Generator] | None = None
            self.generator: torch.Generator | None = generators
        elif generators is None:
            self.per_image, self.generator = None, None
        else:
            self.per_image, self.generator = list(generators), None

    @classmethod
    def from_seeds(cls, seeds: Sequence[int] | torch.Tensor) -> "RoutingNoise":
        """One CPU generator per image, seeded with ``seeds[i]`` (draws are then moved to the device)."""
        values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        return cls([torch.Generator().manual_seed(int(s)) for s in values])

    @classmethod
    def seeded(cls, seed: int) -> "RoutingNoise":
        """One CPU generator for the whole batch."""
        return cls(torch.Generator().manual_seed(int(seed)))

    def normal(self, batch: int, channels: int, like: torch.Tensor) -> torch.Tensor:
        """A batch×channels standard normal draw, on ``like``'s device and dtype."""
        if self.per_image is not None:
            if len(self.per_image) != batch:
                raise ValueError(f"routing noise has {len(self.per_image)} per-image generators for a batch of {batch}")
            draw = torch.stack([torch.randn(channels, generator=g) for g in self.per_image])
        elif self.generator is not None:
            draw = torch.randn(batch, channels, generator=self.generator)
        else:
            return torch.randn(batch, channels, device=like.device, dtype=like.dtype)
        return draw.to(device=like.device, dtype=like.dtype)


class NoisyRouter(nn.Module):
    """Per-image routing probabilities (batch×E, rows sum to 1) from a b×C×H×W feature map."""

    def __init__(self, channels: int, experts: int, noise_std: float, noise_site: str = "pooled") -> None:
        super().__init__()
        self.experts, self.noise_std, self.noise_site = int(experts), float(noise_std), noise_site
        # W has no bias: the equation has none, and a bias would let the router ignore the image.
        self.proj = nn.Linear(channels, experts, bias=False)

    def forward(self, x: torch.Tensor, noise: RoutingNoise | None = None) -> torch.Tensor:
        pooled = x.float().mean(dim=(2, 3))  # φ; fp32 so the softmax is stable under autocast
        if self.training and self.noise_std > 0 and self.experts > 1:
            scale = self.noise_std
            if self.noise_site == "input":  # the mean of H·W i.i.d. N(0, s²) is N(0, s²/(H·W))
                scale = scale / math.sqrt(x.shape[2] * x.shape[3])
            pooled = pooled + scale * (noise or RoutingNoise()).normal(pooled.shape[0], pooled.shape[1], pooled)
        logits = nn.functional.linear(pooled, self.proj.weight.float())
        return torch.softmax(logits, dim=-1)
