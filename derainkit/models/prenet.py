"""PReNet (Ren et al., CVPR 2019): a progressive recurrent deraining network.

Six stages share one set of weights. Each stage sees the rainy image concatenated with the
previous estimate, extracts 32 features, updates a convolutional LSTM, refines with five
residual blocks and predicts a new estimate as (rainy + correction). Inputs and outputs are RGB
in [0, 1]; the output is not clamped here (the official test script clamps and truncates to
uint8; `derainkit.metrics` can reproduce that with ``quantize="trunc"``).

The four LSTM gate convolutions are evaluated as one 64→128 convolution, which is the same
arithmetic in one call; ``load_official_state_dict`` maps the official checkpoint's 32 keys
(``conv0.0``, ``res_conv1..5``, ``conv_i/f/g/o.0``, ``conv.0``) onto this layout.

Variants of the official release (csdwren/PReNet @6d908d1, ``networks.py``), all as config options of
this one module, each loading its official weights (``logs/<set>/<VARIANT>6/net_latest.pth``):

=========  =============================  ==============  ================================
variant    config                         parameters (6)  official keys
=========  =============================  ==============  ================================
PReNet     defaults                       168,963         32: conv0, res_conv1..5, conv_i/f/g/o, conv
PRN        ``recurrent: false``            95,107         24: no LSTM gates
PReNet_r   ``recursive: true``             94,979         16: one residual block ``res_conv1``
PRN_r      both                            21,123          8
=========  =============================  ==============  ================================

``recursive`` (the ``_r`` variants) applies one residual block ``res_blocks`` times (5, as the
official loop ``for j in range(5)``) instead of five different blocks. :data:`VARIANTS` gives the
config of each by name, and ``prn_config_from_dict`` etc. start from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import CheckpointError, ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_state_strict, read_state_dict

_GATES = ("i", "f", "g", "o")  # input, forget, cell candidate, output


@dataclass(frozen=True)
class PReNetConfig:
    stages: int = 6
    channels: int = 32
    res_blocks: int = 5
    recurrent: bool = True  # False gives PRN (no LSTM)
    recursive: bool = False  # True gives the _r variants: one residual block applied res_blocks times

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="PReNetConfig.")
        if self.stages < 1 or self.channels < 1 or self.res_blocks < 0:
            raise ConfigError(f"invalid PReNet config {self}: stages and channels must be >= 1, res_blocks >= 0")
        if self.recursive and self.res_blocks < 1:
            raise ConfigError(f"invalid PReNet config {self}: recursive needs res_blocks >= 1 (the times its one "
                              "block is applied)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PReNetConfig":
        return strict_from_dict(cls, d, "PReNet config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VARIANTS: dict[str, dict[str, Any]] = {
    "prenet": {},
    "prn": {"recurrent": False},
    "prenet_r": {"recursive": True},
    "prn_r": {"recurrent": False, "recursive": True},
}

# The official training recipe (train_PReNet.py, the same in train_PRN.py, train_PReNet_r.py and
# train_PRN_r.py; DerainDataset.py) as run-config overrides: negative SSIM of the last stage only
# (the kit's "ssim" loss is the same pytorch-ssim formulation), Adam at 1e-3, MultiStepLR at epochs
# 30, 50, 80 of 100 with gamma 0.2, batch 18, 100×100 patches (stride 80, each RainTrainL pair also
# flipped: 30 patches per pair, 6,000 per epoch, ceil(6000/18) = 334 iterations per epoch, 33,400 in all).
RECIPE: dict[str, Any] = {
    "loss": "ssim",
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_milestones": [0.3, 0.5, 0.8],
    "lr_gamma": 0.2,
    "crop": 100,
    "batch": 18,
    "iterations": 33400,
}


def _variant_from_dict(variant: str, d: Mapping[str, Any] | None) -> PReNetConfig:
    return PReNetConfig.from_dict({**VARIANTS[variant], **dict(d or {})})


def prn_config_from_dict(d: Mapping[str, Any] | None) -> PReNetConfig:
    """PRN: PReNet without the LSTM (``recurrent: false``), other keys as PReNetConfig."""
    return _variant_from_dict("prn", d)


def prenet_r_config_from_dict(d: Mapping[str, Any] | None) -> PReNetConfig:
    """PReNet_r: one recursively applied residual block (``recursive: true``)."""
    return _variant_from_dict("prenet_r", d)


def prn_r_config_from_dict(d: Mapping[str, Any] | None) -> PReNetConfig:
    """PRN_r: no LSTM and one recursively applied residual block."""
    return _variant_from_dict("prn_r", d)


class PReNet(nn.Module):
    def __init__(self, config: PReNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PReNetConfig()
        c = cfg.channels
        self.head = nn.Conv2d(6, c, 3, padding=1)
        self.gates = nn.Conv2d(2 * c, 4 * c, 3, padding=1) if cfg.recurrent else None
        self.res = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)])
            for _ in range(1 if cfg.recursive else cfg.res_blocks))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, rainy: torch.Tensor, return_stages: bool = False) -> torch.Tensor | list[torch.Tensor]:
        if rainy.dim() != 4 or rainy.shape[1] != 3:
            raise ValueError(f"PReNet expects b×3×H×W RGB input, got {tuple(rainy.shape)}")
        b, _, h, w = rainy.shape
        c = self.config.channels
        x = rainy
        hidden = rainy.new_zeros(b, c, h, w)
        cell = rainy.new_zeros(b, c, h, w)
        stages = []
        for _ in range(self.config.stages):
            x = F.relu(self.head(torch.cat([rainy, x], dim=1)))
            if self.gates is not None:
                gi, gf, gg, go = self.gates(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
                cell = torch.sigmoid(gf) * cell + torch.sigmoid(gi) * torch.tanh(gg)
                hidden = torch.sigmoid(go) * torch.tanh(cell)
                x = hidden
            for conv1, conv2 in self._res_sequence():
                r = F.relu(conv2(F.relu(conv1(x))))
                x = F.relu(x + r)
            x = self.tail(x) + rainy
            stages.append(x)
        return stages if return_stages else x

    def _res_sequence(self) -> list[nn.ModuleList]:
        """The residual blocks in the order a stage applies them (the one block, repeated, when recursive)."""
        return [self.res[0]] * self.config.res_blocks if self.config.recursive else list(self.res)


def official_to_kit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official PReNet state_dict (32 keys) to this module's keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    try:
        out["head.weight"], out["head.bias"] = state.pop("conv0.0.weight"), state.pop("conv0.0.bias")
        out["tail.weight"], out["tail.bias"] = state.pop("conv.0.weight"), state.pop("conv.0.bias")
        if "conv_i.0.weight" in state:
            out["gates.weight"] = torch.cat([state.pop(f"conv_{g}.0.weight") for g in _GATES], dim=0)
            out["gates.bias"] = torch.cat([state.pop(f"conv_{g}.0.bias") for g in _GATES], dim=0)
        j = 1
        while f"res_conv{j}.0.weight" in state:
            for src, dst in ((0, 0), (2, 1)):
                out[f"res.{j - 1}.{dst}.weight"] = state.pop(f"res_conv{j}.{src}.weight")
                out[f"res.{j - 1}.{dst}.bias"] = state.pop(f"res_conv{j}.{src}.bias")
            j += 1
    except KeyError as exc:
        raise CheckpointError(f"not an official PReNet state_dict: missing key {exc}") from None
    if state:
        raise CheckpointError(f"not an official PReNet state_dict: unexpected keys {sorted(state)[:10]}")
    return out


def load_prenet_weights(model: PReNet, path: str | Path) -> PReNet:
    """Load official PReNet weights (legacy or zip torch pickle, plain or DataParallel) or kit weights.

    Accepts ``.pth`` files from the official repository and ``.safetensors`` or ``.pth`` files
    written by the kit. Tensors only are unpickled (``weights_only=True``).
    """
    path = Path(path)
    state = read_state_dict(path)
    if any(k.removeprefix("module.").startswith("conv0.") for k in state):
        try:
            state = official_to_kit(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return load_state_strict(model, state, path, str(model.config))
