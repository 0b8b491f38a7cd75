"""All of NLCL's trainable networks in one module, built in the official construction order.

``NLCLNets`` holds ``background`` (G_B, official ``netBack``), ``rain`` (G_R, ``netRain``), ``disc``
(``netD``) and the heads ``gen_head`` (``netGenSample``), ``adv_back_head`` (``netAdvBackSample``)
and ``adv_rain_head`` (``netAdvRainSample``). The training task builds one optimiser per component.

Head input widths depend on which feature layers the losses use:

* generator heads: one per ``gen_layers`` entry, all ``channels`` wide (official 0,2,4,8,12 → 5×32);
* discriminator heads, ``faithful=True``: the official feature list is [RGB, f0, f3, f7, f11] zipped
  with four layer ids, so the heads that matter take widths 3, 64, 128, 256 (quirk Q1; the official
  fifth MLP on f11 is built and never used); ``faithful=False``: one head per requested D layer on that
  layer's features, 64, 128, 256, 512.

``build_nlcl_nets(..., seed=s)`` reproduces the official initial weights for ``torch.manual_seed(s)``:
netRain and netBack with PyTorch's default init, netD default then xavier_normal(0.02), then the
samplers in the order the first loss pass creates them (GenSample, AdvBack, AdvRain), each default then
xavier(0.02), the faithful Adv samplers also drawing their unused fifth MLP.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn

from derainkit.models.nlcl.config import NLCLConfig
from derainkit.models.nlcl.discriminator import NLCLDiscriminator
from derainkit.models.nlcl.generator import NLCLGenerator
from derainkit.models.nlcl.heads import ProjectionHeads, official_heads_init, xavier_init_

GEN_LAYERS = (0, 2, 4, 8, 12)  # official --gen_nce_layers
ADV_LAYERS = (0, 3, 7, 11)  # official --adv_nce_layers
INIT_GAIN = 0.02  # official --init_gain (xavier)

_OFFICIAL = {"netRain": "rain", "netBack": "background", "netD": "disc", "netGenSample": "gen_head",
             "netAdvBackSample": "adv_back_head", "netAdvRainSample": "adv_rain_head"}


def adv_head_widths(config: NLCLConfig, adv_layers: Sequence[int], faithful: bool) -> tuple[list[int], list[int]]:
    """(widths of the discriminator heads used, widths of official heads built but never used)."""
    if faithful:
        widths = config.disc_feature_widths(adv_layers, include_input=True)
        return widths[:len(adv_layers)], widths[len(adv_layers):]
    return config.disc_feature_widths(adv_layers, include_input=False), []


class NLCLNets(nn.Module):
    def __init__(self, config: NLCLConfig, background: NLCLGenerator, rain: NLCLGenerator,
                 disc: NLCLDiscriminator, gen_head: ProjectionHeads, adv_back_head: ProjectionHeads,
                 adv_rain_head: ProjectionHeads) -> None:
        super().__init__()
        self.config = config
        self.background, self.rain, self.disc = background, rain, disc
        self.gen_head, self.adv_back_head, self.adv_rain_head = gen_head, adv_back_head, adv_rain_head

    def official_module(self, official_name: str) -> nn.Module:
        """The component the official code calls ``official_name`` (netBack, netD, netGenSample, ...)."""
        return getattr(self, _OFFICIAL[official_name])

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in self.official_module(name).parameters()) for name in _OFFICIAL}


def build_nlcl_nets(config: NLCLConfig | None = None, gen_layers: Sequence[int] = GEN_LAYERS,
                    adv_layers: Sequence[int] = ADV_LAYERS, faithful: bool = False,
                    seed: int | None = None) -> NLCLNets:
    """Build every NLCL network in the official order. With ``seed`` the build runs on a forked torch RNG
    seeded with it (the caller's stream is untouched), so ``seed=0`` gives the fixture's initial weights;
    without, it draws from the global RNG like any module constructor."""
    cfg = config or NLCLConfig()
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        rain, background = NLCLGenerator(cfg), NLCLGenerator(cfg)  # official order: netRain first
        disc = xavier_init_(NLCLDiscriminator(cfg), INIT_GAIN)
        gen_head = official_heads_init(cfg.gen_feature_widths(gen_layers), cfg.head_channels, INIT_GAIN)
        used, unused = adv_head_widths(cfg, adv_layers, faithful)
        adv_back = official_heads_init(used, cfg.head_channels, INIT_GAIN, discarded_widths=unused)
        adv_rain = official_heads_init(used, cfg.head_channels, INIT_GAIN, discarded_widths=unused)
    return NLCLNets(cfg, background, rain, disc, gen_head, adv_back, adv_rain)
