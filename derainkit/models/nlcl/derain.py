"""NLCL as a deraining model at the kit's boundary: RGB in [0, 1] in, RGB in [0, 1] out.

The official networks work in [-1, 1]: the official test that made the shipped results (``test.py`` in
the default ``unaligned`` dataset mode) maps an image with ToTensor + Normalize(0.5, 0.5), i.e.
x ↦ (x − 0.5) / 0.5, runs G_B, and saves ``uint8((clamp(B̂, −1, 1) + 1) / 2 · 255)``, a *truncation*
(``util.tensor2im``). The shipped weights reproduce the shipped outputs only with that input scaling
(reference note §3.3, §4: the README's ``--dataset_mode single`` lacks the Normalize and feeds [0, 1],
which is off by 81 grey levels on average).

``NLCLDerain`` does exactly the same arithmetic: ``forward(x) = (G_B(2x − 1) + 1) / 2`` (2x − 1 rounds
exactly like (x − 0.5)/0.5 in float32), unclamped, so that the registry's ``official_quantize="trunc"``
(clip to [0, 1], ×255, truncate) gives the official PNGs.

The rain layer: in [-1, 1] units O ≈ B̂ + R̂, so in [0, 1] image units the rain layer is R̂ / 2 and
``background + rain ≈ rainy``. ``rain_layer()`` is a module whose ``forward`` returns that (mostly small
positive values: rain is additive and bright). The official test computes R̂ but never saves it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from derainkit.errors import CheckpointError
from derainkit.models.nlcl.config import NLCLConfig
from derainkit.models.nlcl.generator import NLCLGenerator


class _Affine(nn.Module):
    """x ↦ x·scale + shift, pointwise (a frame-norm stage with no spatial extent)."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _to_signed() -> _Affine:
    return _Affine(2.0, -1.0)  # [0, 1] -> [-1, 1], as ToTensor + Normalize(0.5, 0.5)


class NLCLDerain(nn.Module):
    """Background (derained image) from a rainy RGB image in [0, 1]; holds both generators."""

    def __init__(self, config: NLCLConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NLCLConfig()
        self.background = NLCLGenerator(cfg)
        self.rain = NLCLGenerator(cfg)
        self.rain_loaded = False  # set by the weights loader when rain-generator weights were found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.background(_to_signed()(x)) + 1.0) / 2.0

    def layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(background, rain layer) in [0, 1] image units; background + rain ≈ x."""
        return self.forward(x), self.rain_layer()(x)

    def rain_layer(self) -> "NLCLRainLayer":
        if not self.rain_loaded:
            raise CheckpointError("no NLCL rain-generator weights were loaded: put latest_net_Rain.pth beside "
                                  "latest_net_Back.pth, or load a kit checkpoint holding both generators")
        return NLCLRainLayer(self.rain)

    def frame_norm_stages(self) -> list[nn.Module]:
        """Stages for ``derainkit.infer.frame_norm`` (see ``generator_stages``)."""
        return generator_stages(self.background, _to_signed(), _Affine(0.5, 0.5))


class NLCLRainLayer(nn.Module):
    """The rain layer R̂/2 of a rainy RGB image in [0, 1] (shares the rain generator)."""

    def __init__(self, rain: NLCLGenerator) -> None:
        super().__init__()
        self.rain = rain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rain(_to_signed()(x)) / 2.0

    def frame_norm_stages(self) -> list[nn.Module]:
        return generator_stages(self.rain, _to_signed(), _Affine(0.5, 0.0))


# --- the generator cut into stages that each start at an InstanceNorm (for exact, cheap frame-norm tiling) ---
# A residual block is x + IN2(conv2(ReLU(IN1(conv1(x))))). Cutting it after each conv, with the skip x
# carried along as extra channels, puts every norm at the start of a stage, so measuring its whole-frame
# statistics costs one read of the stage's input and nothing is computed twice. The arithmetic is the
# generator's own, in the same order (the stages share its modules).

class _OpenBlock(nn.Module):
    """s ↦ cat(x, conv1(x)) with x = prefix(s): the next block's first conv, skip carried along."""

    def __init__(self, prefix: nn.Module, conv1: nn.Conv2d) -> None:
        super().__init__()
        self.prefix, self.conv1 = prefix, conv1

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        x = self.prefix(s)
        return torch.cat([x, self.conv1(x)], dim=1)


class _MidBlock(nn.Module):
    """cat(x, h1) ↦ cat(x, conv2(ReLU(IN1(h1))))."""

    def __init__(self, norm1: nn.Module, conv2: nn.Conv2d) -> None:
        super().__init__()
        self.norm1, self.conv2 = norm1, conv2

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        x, h = s.chunk(2, dim=1)
        return torch.cat([x, self.conv2(torch.relu(self.norm1(h)))], dim=1)


class _CloseBlock(nn.Module):
    """cat(x, h2) ↦ x + IN2(h2): the end of a residual block (used as the next stage's prefix)."""

    def __init__(self, norm2: nn.Module) -> None:
        super().__init__()
        self.norm2 = norm2

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        x, h = s.chunk(2, dim=1)
        return x + self.norm2(h)


def generator_stages(gen: NLCLGenerator, to_input: nn.Module, to_output: nn.Module) -> list[nn.Module]:
    """``to_output ∘ gen ∘ to_input`` as stages that each begin at an InstanceNorm (or use none)."""
    layers = gen.stages()
    first, blocks, tail, last = layers[0], layers[1:-2], layers[-2], layers[-1]
    prefix: nn.Module = nn.Sequential(to_input, first)
    stages: list[nn.Module] = []
    for block in blocks:
        unit1, unit2 = block.model
        stages += [_OpenBlock(prefix, unit1.conv), _MidBlock(unit1.norm, unit2.conv)]
        prefix = _CloseBlock(unit2.norm)
    conv_a, norm, relu, conv_b = tail.conv
    stages += [nn.Sequential(prefix, conv_a), nn.Sequential(norm, relu, conv_b, last, to_output)]
    return stages
