"""NLCL's PatchGAN discriminator: the LSGAN critic on the background domain and, in encode mode, the
feature encoder of the layer-contrastive (NLCL) loss.

Official code facts (reference note §1.2, fixture README): CUT's ``NLayerDiscriminator`` with
n_layers=3, ndf=64, InstanceNorm (no affine), antialiased. Sequential indices (state_dict keys
``model.{0,3,7,11,14}.{weight,bias}`` plus the blur buffers ``model.{2,6,10}.filt``):

    0 Conv 3→64 k4 s1 p1 · 1 LReLU(0.2) · 2 Blur↓2 · 3 Conv 64→128 · 4 IN · 5 LReLU · 6 Blur↓2 ·
    7 Conv 128→256 · 8 IN · 9 LReLU · 10 Blur↓2 · 11 Conv 256→512 · 12 IN · 13 LReLU · 14 Conv 512→1

Blur↓2 reflect-pads by 1 and convolves each channel with [1,2,1]⊗[1,2,1]/16 at stride 2. A 256² input
gives features of 255, 127, 63 and 31 px and a 30×30 prediction map. Initialisation: xavier_normal
with gain 0.02, biases 0 (``init_net``).

Encode mode (``encode``) returns the official feature list in ``faithful`` mode: the RGB input first,
then the outputs of the requested layers, where the layer-0 entry is *post*-LeakyReLU because the
official LeakyReLU is in-place and overwrites the stored conv output (quirk Q2). With
``faithful=False`` it returns the raw outputs of the requested convs only (no RGB entry, layer 0
before its activation like the others before their InstanceNorm).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.models.nlcl.config import NLCLConfig


class BlurPool(nn.Module):
    """Antialiased stride-2 downsampling: reflect pad 1, per-channel [1,2,1]² / 16 filter (a buffer,
    kept in the state_dict as ``filt`` like the official ``Downsample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _in(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class NLCLDiscriminator(nn.Module):
    def __init__(self, config: NLCLConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NLCLConfig()
        ndf = cfg.disc_channels
        seq: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 1, 1), nn.LeakyReLU(0.2), BlurPool(ndf)]
        mult = 1
        for n in range(1, cfg.disc_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), _in(ndf * mult), nn.LeakyReLU(0.2),
                    BlurPool(ndf * mult)]
        prev, mult = mult, min(2 ** cfg.disc_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), _in(ndf * mult), nn.LeakyReLU(0.2),
                nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The PatchGAN prediction map (b×1×h'×w', no sigmoid: LSGAN)."""
        return self.model(x)

    def encode(self, x: torch.Tensor, layers: Sequence[int], faithful: bool = False) -> list[torch.Tensor]:
        """Features at the Sequential indices ``layers`` (increasing), stopping after the last one.

        ``faithful``: the official list ``[x, f_l0, f_l1, ...]`` with the layer-0 entry post-LeakyReLU
        (Q2: in-place activation). Otherwise ``[f_l0, f_l1, ...]``, each the raw output of its module.
        """
        wanted = list(layers)
        if wanted != sorted(set(wanted)) or not wanted or wanted[-1] >= len(self.model):
            raise ValueError(f"encode layers must be increasing, distinct and < {len(self.model)}, got {wanted}")
        feats = [x] if faithful else []
        for i, layer in enumerate(self.model):
            x = layer(x)
            if faithful and i - 1 in wanted and isinstance(layer, nn.LeakyReLU):
                # the official LeakyReLU is in-place: it overwrites the feature stored just before it (Q2)
                feats[-1] = x
            if i in wanted:
                feats.append(x)
            if i == wanted[-1]:  # the official encoder returns right after the last requested layer
                break
        return feats
