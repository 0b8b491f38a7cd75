"""Soft and hard (top-k) mixture-of-experts layers, routed per image (paper equations, reference §1.1).

Soft (encoder): ``y = Σ_e R[e] · Expert_e(x)`` with ``R = softmax(W(φ(x) + ε))``: every expert runs on
every image and the weights of an image sum to 1.

Hard (decoder): ``y = Σ_e TopK(R)[e] · Expert_e(x)``: TopK keeps the k largest probabilities of each
image and zeroes the others, *without* renormalising them (the equation as written; ``renormalize=True``
divides by their sum instead). Only the selected experts run, each on the sub-batch of images that
selected it, so an image costs k experts. The router learns through the kept probabilities: with
renormalisation and k = 1 the weight is always 1 and the router gets no gradient, which is one reason
to keep the paper's form as the default.

Each layer records what its last forward did in ``last`` (a :class:`Routing`): the full probabilities,
the weights applied, and which (image, expert) pairs were actually computed. There is no auxiliary
load-balancing loss: the released ``train.py`` optimises only the weighted L1 (reference §1.1).

The experts are GDFNs (our reconstruction, see ``blocks.py``). With E = 1 both layers compute exactly
the dense block: the softmax of one logit is 1 and ``1.0 · y`` is ``y``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from derainkit.models.unirain.router import NoisyRouter, RoutingNoise


@dataclass(frozen=True)
class Routing:
    """What one MoE layer did in its last forward (tensors detached, on the layer's device).

    kind:    "soft" or "hard"
    probs:   batch×E router probabilities (rows sum to 1)
    weights: batch×E weights the expert outputs were multiplied by (soft: ``probs``; hard: the top-k
             probabilities, renormalised if configured, zero elsewhere)
    ran:     batch×E booleans, True where expert e was computed on image b
    """

    kind: str
    probs: torch.Tensor
    weights: torch.Tensor
    ran: torch.Tensor


class _MoE(nn.Module):
    kind = ""

    def __init__(self, experts: list[nn.Module], channels: int, noise_std: float, noise_site: str) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.router = NoisyRouter(channels, len(experts), noise_std, noise_site)
        self.last: Routing | None = None


class SoftMoE(_MoE):
    """Every expert on every image, mixed by the router's probabilities."""

    kind = "soft"

    def forward(self, x: torch.Tensor, noise: RoutingNoise | None = None) -> torch.Tensor:
        probs = self.router(x, noise)
        w = probs.to(x.dtype)
        out = sum(w[:, e].view(-1, 1, 1, 1) * expert(x) for e, expert in enumerate(self.experts))
        self.last = Routing("soft", probs.detach(), probs.detach(), torch.ones_like(probs, dtype=torch.bool))
        return out


class HardMoE(_MoE):
    """Each image goes to its top-k experts only; their outputs are weighted by the kept probabilities."""

    kind = "hard"

    def __init__(self, experts: list[nn.Module], channels: int, noise_std: float, noise_site: str, top_k: int,
                 renormalize: bool = False) -> None:
        super().__init__(experts, channels, noise_std, noise_site)
        self.top_k, self.renormalize = int(top_k), bool(renormalize)

    def forward(self, x: torch.Tensor, noise: RoutingNoise | None = None) -> torch.Tensor:
        probs = self.router(x, noise)
        top_p, top_i = probs.topk(self.top_k, dim=1)
        if self.renormalize:
            top_p = top_p / top_p.sum(dim=1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(1, top_i, top_p)
        ran = torch.zeros_like(probs, dtype=torch.bool).scatter(1, top_i, True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = ran[:, e].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue  # no image chose this expert: it does not run (DDP must look for unused parameters)
            y = expert(x.index_select(0, rows)) * weights.index_select(0, rows)[:, e].to(x.dtype).view(-1, 1, 1, 1)
            # index_copy into zeros then add (rows are unique): deterministic, unlike an atomic index_add on CUDA
            out = out + torch.zeros_like(x).index_copy(0, rows, y)
        self.last = Routing("hard", probs.detach(), weights.detach(), ran)
        return out
