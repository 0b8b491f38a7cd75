"""The UniRain network as we reconstruct it: a Restormer U-Net with soft MoE in the encoder and hard top-k
MoE in the decoder (paper: the routing equations and the soft/hard asymmetry; ours: everything else, see
``config.py`` and ``blocks.py``).

Topology (Restormer's): 3×3 conv 3 → C; encoder levels at C, 2C, 4C with ``Downsample`` between them; a
latent at 8C; decoder levels at 4C and 2C, each after an ``Upsample``, a concatenation with the encoder
skip and a 1×1 reduction; decoder level 1 at 2C (the concatenation is not reduced); refinement blocks at
2C; 3×3 conv 2C → 3; plus the input (global residual). Input and output are RGB in [0, 1]; the output
is not clamped. Any size works: the input is padded (reflect) to a multiple of 8 and the output cropped
back, so the padding never reaches the caller.

After each forward, ``routing()`` returns what every MoE layer did, by module name (per-image
probabilities, weights and which experts ran): for tests and for plotting routing statistics.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.models.unirain.blocks import GDFN, Downsample, TransformerBlock, Upsample
from derainkit.models.unirain.config import UniRainConfig
from derainkit.models.unirain.moe import HardMoE, Routing, SoftMoE, _MoE
from derainkit.models.unirain.router import RoutingNoise


def make_ffn(cfg: UniRainConfig, width: int, routing: str) -> nn.Module:
    """The feed-forward of one block: a dense GDFN, or a soft/hard MoE of GDFN experts."""
    if routing == "dense":
        return GDFN(width, cfg.hidden(width, moe=False), cfg.bias)
    experts = [GDFN(width, cfg.hidden(width, moe=True), cfg.bias) for _ in range(cfg.experts)]
    if routing == "soft":
        return SoftMoE(experts, width, cfg.router_noise_std, cfg.noise_site)
    return HardMoE(experts, width, cfg.router_noise_std, cfg.noise_site, cfg.top_k, cfg.renormalize)


class Stage(nn.Module):
    """A run of transformer blocks at one width; the routing noise source is handed to every block."""

    def __init__(self, cfg: UniRainConfig, width: int, heads: int, depth: int, routing: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, make_ffn(cfg, width, routing), cfg.bias) for _ in range(depth))

    def forward(self, x: torch.Tensor, noise: RoutingNoise | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, noise)
        return x


class UniRain(nn.Module):
    def __init__(self, config: UniRainConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UniRainConfig()
        c, nb, hd, enc, dec = cfg.channels, cfg.blocks, cfg.heads, cfg.encoder_routing, cfg.decoder_routing
        self.embed = nn.Conv2d(3, c, 3, padding=1, bias=cfg.bias)
        self.enc1 = Stage(cfg, c, hd[0], nb[0], enc)
        self.down1 = Downsample(c, cfg.bias)
        self.enc2 = Stage(cfg, 2 * c, hd[1], nb[1], enc)
        self.down2 = Downsample(2 * c, cfg.bias)
        self.enc3 = Stage(cfg, 4 * c, hd[2], nb[2], enc)
        self.down3 = Downsample(4 * c, cfg.bias)
        self.latent = Stage(cfg, 8 * c, hd[3], nb[3], "dense")
        self.up3 = Upsample(8 * c, cfg.bias)
        self.reduce3 = nn.Conv2d(8 * c, 4 * c, 1, bias=cfg.bias)
        self.dec3 = Stage(cfg, 4 * c, hd[2], nb[2], dec)
        self.up2 = Upsample(4 * c, cfg.bias)
        self.reduce2 = nn.Conv2d(4 * c, 2 * c, 1, bias=cfg.bias)
        self.dec2 = Stage(cfg, 2 * c, hd[1], nb[1], dec)
        self.up1 = Upsample(2 * c, cfg.bias)
        self.dec1 = Stage(cfg, 2 * c, hd[0], nb[0], dec)
        self.refine = Stage(cfg, 2 * c, hd[0], cfg.refinement_blocks, "dense")
        self.output = nn.Conv2d(2 * c, 3, 3, padding=1, bias=cfg.bias)

    def forward(self, rainy: torch.Tensor, noise: RoutingNoise | None = None) -> torch.Tensor:
        """Derained b×3×H×W RGB in [0, 1] (not clamped). ``noise``: the routers' noise source in training
        (default: torch's global RNG); ignored in eval mode, where routing is deterministic."""
        if rainy.dim() != 4 or rainy.shape[1] != 3:
            raise ValueError(f"UniRain expects b×3×H×W RGB input, got {tuple(rainy.shape)}")
        h, w = rainy.shape[2:]
        x = _pad_to_multiple(rainy, self.config.multiple)
        e1 = self.enc1(self.embed(x), noise)
        e2 = self.enc2(self.down1(e1), noise)
        e3 = self.enc3(self.down2(e2), noise)
        z = self.latent(self.down3(e3), noise)
        d3 = self.dec3(self.reduce3(torch.cat([self.up3(z), e3], dim=1)), noise)
        d2 = self.dec2(self.reduce2(torch.cat([self.up2(d3), e2], dim=1)), noise)
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1), noise)
        out = self.output(self.refine(d1, noise)) + x
        return out[:, :, :h, :w]

    def moe_layers(self) -> dict[str, _MoE]:
        """Every MoE layer by module name, in forward order (encoder first)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, _MoE)}

    def routing(self) -> dict[str, Routing]:
        """What each MoE layer did in the last forward (empty before the first one)."""
        return {name: m.last for name, m in self.moe_layers().items() if m.last is not None}


@torch.no_grad()
def routing_statistics(model: UniRain, images: dict[str, list[torch.Tensor]]) -> dict[str, dict[str, dict]]:
    """Per group of images (e.g. per rain type) and per MoE layer: the mean expert weights and how often each
    expert ran, in eval mode (deterministic routing). ``images``: name -> list of 1×3×H×W tensors."""
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, dict]] = {}
    try:
        for group, tensors in images.items():
            acc: dict[str, list[torch.Tensor]] = {}
            for x in tensors:
                model(x.to(next(model.parameters()).device))
                for name, r in model.routing().items():
                    acc.setdefault(name, []).append(torch.cat([r.weights.cpu(), r.ran.float().cpu()], dim=1))
            e = model.config.experts
            out[group] = {name: {"kind": model.moe_layers()[name].kind,
                                 "mean_weight": torch.cat(v).mean(0)[:e].tolist(),
                                 "ran_fraction": torch.cat(v).mean(0)[e:].tolist()} for name, v in acc.items()}
    finally:
        model.train(was_training)
    return out


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs the pad smaller than the side
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_unirain_weights(model: UniRain, path: str | Path) -> UniRain:
    """Kit weights (``.safetensors`` export, training checkpoint or state_dict ``.pth``); strict."""
    from derainkit.weights import load_weights_file

    return load_weights_file(model, path, "UniRain")
