"""SPANet (Wang et al., CVPR 2019, "Spatial Attentive Single-Image Deraining with a High Quality Real
Rain Dataset"): a residual network whose middle blocks are gated by spatial attention maps computed
by four-direction IRNNs.

Architecture, as the official release defines it (stevewongv/SPANet @82d2889, ``SPANet.py``; facts
taken from it, code written here). All convolutions are bias-free unless noted.

- ``conv_in``: conv3×3 3→32, ReLU.
- 17 bottleneck blocks ``res_block1..17``: conv1×1 32→32, ReLU, dilated conv3×3 (dilation 2) 32→32,
  ReLU, conv1×1 32→32 (no activation at the end); each is used as ``relu(block(x)·A + x)``, with the
  attention map ``A`` = 1 for blocks 1–3 and 16–17.
- Four attention points, after blocks 3, 6, 9 and 12; the map computed there gates the next three
  blocks. The map comes from a SAM: conv3×3 32→32, a four-direction IRNN, concatenation (4·32),
  conv3×3 128→32, a second IRNN, concatenation, conv3×3 128→32, ReLU, conv1×1 32→1, sigmoid.
  Each IRNN has a weight and a bias per direction and channel (see :mod:`derainkit.models.irnn`;
  the weights initialised to 0.2, the biases as PyTorch's default 1×1 depthwise conv bias).
- ``conv_out``: conv3×3 32→3. The output is the derained image itself, not a residual.

Where the official code and the paper differ (both available here, default = the official code,
since the released weights and the numbers measured from them come from it):

- ``attention="discarded"`` (official code): the SAM also holds an "attention layer" (conv3×3
  32→16 with bias, ReLU, conv3×3 16→16 with bias, ReLU, conv1×1 16→4 with bias, sigmoid) meant to
  weight the four IRNN directions, but the code calls the out-of-place ``Tensor.mul`` and throws the
  products away, so these 7,012 parameters change nothing (and got no gradient in training).
  They are kept so the official state_dict loads with strict keys, and not computed.
  ``attention="applied"`` (the paper's SAM): each direction's IRNN output is multiplied by its
  attention channel (up, right, down, left = channels 0–3) before concatenation, in both IRNN rounds.
- ``shared_sam=True`` (official code): one SAM module (``SAM1``) is called at all four attention
  points (283,716 parameters). ``shared_sam=False``: four SAMs ``SAM1..SAM4``, one per spatial
  attentive block as the paper's figure draws them (+3 × 90,500 = 555,216 parameters).

Conventions. The official model reads images with OpenCV: **BGR** in [0, 1], and returns BGR. The
kit's models take and return **RGB** in [0, 1], so :class:`SPANet` flips the channel order on the way
in and on the way out; the weights are used as trained. The output is not clamped. The official test
(``main.py -a test``) scores clipped floats with ``skimage.measure`` (PSNR, SSIM) and saves
``clip(pred, 0, 1)·255`` as a float array with ``cv2.imwrite``, which converts to uint8 by rounding
(OpenCV's saturate_cast): ``official_quantize="round"``. ``forward(x, return_attention=True)`` also returns the first
attention map (b×1×H×W), which the official training loss supervises.

The official weights (``model/latest`` of the release, a ``{'net', 'clock', 'opt'}`` pickle, 40,000
iterations) were trained on SPA-Data (real rain), not on Rain100L/H.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.models.irnn import DIRECTIONS, irnn, irnn_loop
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

ATTENTION_MODES = ("discarded", "applied")
IRNN_IMPLEMENTATIONS = ("fast", "loop")
CHANNELS = 32
_GATED = (4, 7, 10, 13)  # first block gated by attention maps 1..4 (each gates three blocks)

# The paper's training recipe as run-config overrides (RunConfig keys).
# Sources: official main.py (Adam lr 5e-3, MultiStepLR at 30,000 of 40,001 steps, gamma 0.1, batch 16)
# and dataset.py (RandomResizedCrop(256), scale 0.8-1); the README says the release stops at 40K
# steps "for generalization". The paper's loss is MSE + SSIM on the image plus an MSE attention loss;
# the official code uses L1 instead of MSE (see derainkit.losses.peers). "loss": "spanet" is that whole
# objective (derainkit.losses: image MSE + 1 − SSIM and the attention MSE against the rain mask).
RECIPE: dict[str, Any] = {
    "loss": "spanet",
    "optimizer": "adam",
    "lr": 5e-3,
    "lr_milestones": [0.75],  # 30,000 / 40,000
    "lr_gamma": 0.1,
    "crop": 256,
    "batch": 16,
    "iterations": 40000,
}


@dataclass(frozen=True)
class SPANetConfig:
    attention: str = "discarded"  # "discarded" (official code) | "applied" (paper)
    shared_sam: bool = True  # True: one SAM at all four points (official code); False: four SAMs
    irnn: str = "fast"  # "fast" scan | "loop" (the literal per-step reference; same values, slower)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="SPANetConfig.")
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"SPANetConfig.attention={self.attention!r} is invalid; "
                              f"expected one of {list(ATTENTION_MODES)}")
        if self.irnn not in IRNN_IMPLEMENTATIONS:
            raise ConfigError(f"SPANetConfig.irnn={self.irnn!r} is invalid; "
                              f"expected one of {list(IRNN_IMPLEMENTATIONS)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SPANetConfig":
        return strict_from_dict(cls, d, "SPANet config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DirectionCoeffs(nn.Module):
    """One direction's IRNN coefficients, keyed like the official depthwise 1×1 conv (weight c×1×1×1, bias c)."""

    def __init__(self, channels: int, alpha: float = 0.2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels, 1, 1, 1), alpha))
        bound = 1.0  # PyTorch's default conv bias bound, 1/sqrt(fan_in), with fan_in = 1
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))


class SpatialIRNN(nn.Module):
    """The four-direction IRNN with learnt coefficients (official ``Spacial_IRNN``; keys up/right/down/left_weight)."""

    def __init__(self, channels: int, implementation: str = "fast") -> None:
        super().__init__()
        for name in DIRECTIONS:
            setattr(self, f"{name}_weight", _DirectionCoeffs(channels))
        self.implementation = implementation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """b×c×H×W -> b×4×c×H×W (directions in :data:`DIRECTIONS` order)."""
        coeffs = [getattr(self, f"{name}_weight") for name in DIRECTIONS]
        weight = torch.stack([m.weight.view(-1) for m in coeffs])
        bias = torch.stack([m.bias for m in coeffs])
        return (irnn if self.implementation == "fast" else irnn_loop)(x, weight, bias)


class DirectionAttention(nn.Module):
    """The SAM's attention layer: four sigmoid maps, one per IRNN direction (official ``Attention``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1 = nn.Conv2d(channels, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.conv3 = nn.Conv2d(mid, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


class SAM(nn.Module):
    """Spatial attentive module: IRNN context in four directions, twice, -> one sigmoid map (b×1×H×W)."""

    def __init__(self, channels: int, config: SPANetConfig) -> None:
        super().__init__()
        self.apply_attention = config.attention == "applied"
        self.irnn1 = SpatialIRNN(channels, config.irnn)
        self.irnn2 = SpatialIRNN(channels, config.irnn)
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4 * channels, channels, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(4 * channels, channels, 3, padding=1, bias=False)
        self.attention_layer = DirectionAttention(channels)
        self.conv_out = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # official code: the attention layer's output is multiplied out of place and discarded, so it
        # is not computed unless the paper's variant applies it
        weights = self.attention_layer(x).unsqueeze(2) if self.apply_attention else None
        out = self.conv_in(x)
        for irnn_layer, conv in ((self.irnn1, self.conv2), (self.irnn2, self.conv3)):
            directions = irnn_layer(out)  # b×4×c×H×W
            if weights is not None:
                directions = directions * weights
            out = conv(directions.flatten(1, 2))
        return torch.sigmoid(self.conv_out(F.relu(out)))


class Bottleneck(nn.Module):
    """conv1×1, ReLU, dilated conv3×3, ReLU, conv1×1 (no bias, no final ReLU), keyed ``group1.conv1..3``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.group1 = nn.ModuleDict({
            "conv1": nn.Conv2d(channels, channels, 1, bias=False),
            "conv2": nn.Conv2d(channels, channels, 3, padding=2, dilation=2, bias=False),
            "conv3": nn.Conv2d(channels, channels, 1, bias=False),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group1
        return g["conv3"](F.relu(g["conv2"](F.relu(g["conv1"](x)))))


class SPANet(nn.Module):
    """SPANet on RGB images in [0, 1] (channels flipped to the official BGR inside); see the module docstring."""

    def __init__(self, config: SPANetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SPANetConfig()
        c = CHANNELS
        self.conv_in = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.ReLU())
        for k in range(1, 2 if cfg.shared_sam else 5):
            setattr(self, f"SAM{k}", SAM(c, cfg))
        for k in range(1, 18):
            setattr(self, f"res_block{k}", Bottleneck(c))
        self.conv_out = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1, bias=False))

    def _sam(self, k: int) -> SAM:
        return self.SAM1 if self.config.shared_sam else getattr(self, f"SAM{k}")

    def forward_bgr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official network: BGR in [0, 1] -> (first attention map b×1×H×W, derained BGR image)."""
        out = self.conv_in(x)
        first = None
        attention: torch.Tensor | None = None
        for k in range(1, 18):
            if k in _GATED:
                attention = self._sam(_GATED.index(k) + 1)(out)
                first = attention if first is None else first
            elif k == 16:
                attention = None
            r = getattr(self, f"res_block{k}")(out)
            out = F.relu((r if attention is None else r * attention) + out)
        return first, self.conv_out(out)

    def forward(self, rgb: torch.Tensor, return_attention: bool = False):
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"SPANet expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        attention, bgr = self.forward_bgr(rgb.flip(1))
        out = bgr.flip(1)
        return (out, attention) if return_attention else out


def load_spanet_weights(model: SPANet, path: str | Path) -> SPANet:
    """Load the official SPANet checkpoint (``{'net': state_dict, 'clock', 'opt'}``, plain or DataParallel)
    or kit weights, with strict keys. Only tensors are unpickled (``weights_only=True``)."""
    return load_weights_file(model, path, "SPANet")


__all__ = ["RECIPE", "SAM", "SPANet", "SPANetConfig", "SpatialIRNN", "load_spanet_weights"]
