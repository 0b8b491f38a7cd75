"""RESCAN (Li et al., ECCV 2018, "Recurrent Squeeze-and-Excitation Context Aggregation Net for Single
Image Deraining"): a dilated context-aggregation network with squeeze-and-excitation, unrolled over
stages with recurrent units that carry each layer's state from stage to stage.

Architecture, as the official code defines it (XiaLiPKU/RESCAN, ``config/model.py`` and
``config/settings.py``; facts taken from them, code written here). Default configuration: GRU units,
4 stages, depth 7, 24 channels, SE on, frame "Full": 149,823 parameters.

- ``depth - 2`` recurrent units in sequence (``rnns``): the first maps 3→C with a 3×3 conv, the
  others C→C with 3×3 convs dilated 1, 2, 4, 8, … (``2**i``, ``i < depth - 3``). Inside a unit, input
  convolutions (``conv_x*``) use the unit's dilation and state convolutions (``conv_h*``) are plain
  3×3; the new state goes through SE then LeakyReLU(0.2), and that is both the unit's output and the
  state it hands to the same unit in the next stage. At the first stage there is no state: GRU
  gives h = σ(conv_xz x)·tanh(conv_xn x); LSTM gives c = σ(conv_xi x)·tanh(conv_xj x), h = σ(conv_xo x)·c
  (no tanh on c, as in the code); RNN gives tanh(conv_x x). Unit "Conv" has no recurrence.
- A decoder (``dec``): conv3×3 C→C, SE, LeakyReLU(0.2), conv1×1 C→3. It predicts the **rain layer**.
- Stage s predicts R_s; the next stage's input is O − R_s (frame "Full"); with frame "Add" each stage
  adds the previous (detached) prediction to its own output. The derained image is O − R_last.
- SE block (official code): global average pool, Linear(C, 6), ReLU, Linear(6, C), sigmoid, scale.
  The hidden width is the *reduction* argument itself (6), not C/6: the code computes C/6 and does
  not use it. ``se_hidden`` keeps 6 (the official count); set it to C // 6 for the usual SE reading.

Inputs and outputs here are RGB in [0, 1]; :meth:`RESCAN.forward` returns the derained image
(O − R_last), ``return_stages=True`` every stage's derained image O − R_s. The official code trains on
OpenCV (BGR) images, which only relabels channels for a network trained from scratch; there are no
official weights. The official ``eval.py`` scores floats (MSE, SSIM) and ``show.py`` writes
``clip(pred·255)`` as floats with ``cv2.imwrite``, which rounds to uint8 (``official_quantize="round"``).
Module names follow the official ones, so a state_dict trained with the official
code (``{'net': ...}`` checkpoints) loads directly (its channels are then BGR).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

UNITS = ("Conv", "RNN", "GRU", "LSTM")
FRAMES = ("full", "add")

# The official training recipe as run-config overrides (config/settings.py and config/train.py):
# Adam at 5e-3, MultiStepLR at 15,000 and 17,500 of 20,000 iterations with gamma 0.1, batch 64, 64×64
# patches, no augmentation, seed 66. The loss is the sum over stages of the MSE between each stage's
# rain layer and O − B, which equals the sum over stages of the MSE between O − R_s and B:
# derainkit.losses.peers.rescan_loss over forward(x, return_stages=True); "loss" names it as the lead
# registers it.
RECIPE: dict[str, Any] = {
    "loss": "rescan_stagewise_mse",
    "optimizer": "adam",
    "lr": 5e-3,
    "lr_milestones": [0.75, 0.875],
    "lr_gamma": 0.1,
    "crop": 64,
    "batch": 64,
    "iterations": 20000,
    "seed": 66,
}


@dataclass(frozen=True)
class RESCANConfig:
    unit: str = "GRU"  # Conv | RNN | GRU | LSTM
    stages: int = 4
    depth: int = 7  # >= 3: depth - 2 recurrent units
    channels: int = 24
    se: bool = True
    se_hidden: int = 6  # official code: the reduction argument (6) used as the hidden width
    frame: str = "full"  # full | add

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="RESCANConfig.")
        if self.unit not in UNITS:
            raise ConfigError(f"RESCANConfig.unit={self.unit!r} is invalid; expected one of {list(UNITS)}")
        if self.frame not in FRAMES:
            raise ConfigError(f"RESCANConfig.frame={self.frame!r} is invalid; expected one of {list(FRAMES)}")
        if self.depth < 3 or self.stages < 1 or self.channels < 1 or self.se_hidden < 1:
            raise ConfigError(f"invalid RESCAN config {self}: depth must be >= 3, stages, channels and se_hidden >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RESCANConfig":
        return strict_from_dict(cls, d, "RESCAN config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SEBlock(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class _Unit(nn.Module):
    """A recurrent unit: gate convolutions on the input (dilated) and on the state (plain 3×3)."""

    gates_x: tuple[str, ...] = ()
    gates_h: tuple[str, ...] = ()

    def __init__(self, cin: int, cout: int, dilation: int, cfg: RESCANConfig) -> None:
        super().__init__()
        for g in self.gates_x:
            setattr(self, f"conv_x{g}", nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        for g in self.gates_h:
            setattr(self, f"conv_h{g}", nn.Conv2d(cout, cout, 3, padding=1))
        self.se = SEBlock(cout, cfg.se_hidden) if cfg.se else nn.Identity()
        self.relu = nn.LeakyReLU(0.2)

    def x(self, g: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"conv_x{g}")(x)

    def h(self, g: str, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"conv_h{g}")(h)

    def out(self, h: torch.Tensor) -> torch.Tensor:
        return self.relu(self.se(h))


class ConvUnit(_Unit):
    def __init__(self, cin: int, cout: int, dilation: int, cfg: RESCANConfig) -> None:
        super().__init__(cin, cout, dilation, cfg)
        self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return self.out(self.conv(x)), None


class RNNUnit(_Unit):
    gates_x = gates_h = ("",)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        pre = self.x("", x) if state is None else self.x("", x) + self.h("", state)
        h = self.out(torch.tanh(pre))
        return h, h


class GRUUnit(_Unit):
    gates_x = gates_h = ("z", "r", "n")

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None:
            h = torch.sigmoid(self.x("z", x)) * torch.tanh(self.x("n", x))
        else:
            z = torch.sigmoid(self.x("z", x) + self.h("z", state))
            r = torch.sigmoid(self.x("r", x) + self.h("r", state))
            n = torch.tanh(self.x("n", x) + self.h("n", r * state))
            h = (1 - z) * state + z * n
        h = self.out(h)
        return h, h


class LSTMUnit(_Unit):
    gates_x = gates_h = ("f", "i", "o", "j")

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None:
            c = torch.sigmoid(self.x("i", x)) * torch.tanh(self.x("j", x))
            h = torch.sigmoid(self.x("o", x)) * c  # official code: no tanh on c at the first stage
        else:
            h, c = state
            f = torch.sigmoid(self.x("f", x) + self.h("f", h))
            i = torch.sigmoid(self.x("i", x) + self.h("i", h))
            o = torch.sigmoid(self.x("o", x) + self.h("o", h))
            c = f * c + i * torch.tanh(self.x("j", x) + self.h("j", h))
            h = o * torch.tanh(c)
        h = self.out(h)
        return h, (h, c)


_UNIT_CLASSES = {"Conv": ConvUnit, "RNN": RNNUnit, "GRU": GRUUnit, "LSTM": LSTMUnit}


class RESCAN(nn.Module):
    def __init__(self, config: RESCANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or RESCANConfig()
        unit, c = _UNIT_CLASSES[cfg.unit], cfg.channels
        self.rnns = nn.ModuleList([unit(3, c, 1, cfg)] + [unit(c, c, 2 ** i, cfg) for i in range(cfg.depth - 3)])
        self.dec = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), SEBlock(c, cfg.se_hidden) if cfg.se else nn.Identity(),
                                 nn.LeakyReLU(0.2), nn.Conv2d(c, 3, 1))

    def rain_layers(self, rainy: torch.Tensor) -> list[torch.Tensor]:
        """The official forward: the rain layer R_s predicted at every stage."""
        x, states, rains = rainy, [None] * len(self.rnns), []
        for s in range(self.config.stages):
            new_states = []
            for unit, state in zip(self.rnns, states):
                x, st = unit(x, state)
                new_states.append(st)
            r = self.dec(x)
            if self.config.frame == "add" and s > 0:
                r = r + rains[-1].detach()
            rains.append(r)
            states = new_states
            x = rainy - r
        return rains

    def forward(self, rainy: torch.Tensor, return_stages: bool = False) -> torch.Tensor | list[torch.Tensor]:
        if rainy.dim() != 4 or rainy.shape[1] != 3:
            raise ValueError(f"RESCAN expects b×3×H×W RGB input, got {tuple(rainy.shape)}")
        rains = self.rain_layers(rainy)
        return [rainy - r for r in rains] if return_stages else rainy - rains[-1]


def load_rescan_weights(model: RESCAN, path: str | Path) -> RESCAN:
    """Load kit weights or a checkpoint of the official code (``{'net': state_dict, ...}``), strict keys."""
    return load_weights_file(model, path, "RESCAN")


__all__ = ["RECIPE", "RESCAN", "RESCANConfig", "load_rescan_weights"]
