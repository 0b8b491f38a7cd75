"""DCSFN (Wang, Xing, Wu, Su, Chen, ACM MM 2020): deep cross-scale fusion network for rain removal.

What the network is (official code, Ohraincu/DCSFN ``config/model.py`` with ``config/settings.py``'s
defaults; 6,453,147 parameters, the 6.45 M quoted for DCSFN; the repository's abstract describes the same
design — sub-networks at several scales fused "in a cross-scale manner by Gate Recurrent Unit",
inner-scale connection blocks, dense connections; the paper PDF was not readable here, so the details
below are the code's):

* A 3×3 convolution (3→C, C = 20) and LeakyReLU(0.2) give the features; max-pooling them by 2 and by 4
  gives three sub-networks at full, 1/2 and 1/4 resolution.
* Each sub-network is an encoder and a decoder of 16 *inner-scale connection blocks*, densely connected:
  after block i the concatenation of the sub-network input and all block outputs so far is reduced to
  C channels by a 1×1 convolution. A decoder block's input is the running feature plus the matching
  encoder block's output.
* An inner-scale block max-pools its input by 1, 2, 4 and 8, runs four 3×3 conv+LeakyReLU layers per
  scale from the coarsest up, each finer scale first fusing (1×1 conv of the concatenation) its pooled
  input with the nearest-upsampled coarser result, then fuses all four scales (1×1, 4C→C) and adds the
  block input.
* Between encoders and decoders the three scales talk through convolutional GRUs (the paper's "cross
  scale manner by Gate Recurrent Unit"): coarse→fine (1/4 → 1/2 → 1, the full-res cell taking the 1×1
  fusion of both upsampled states) and then fine→coarse (1 → 1/2 → 1/4), each cell's state being
  its LeakyReLU'd output. The first cell of each chain has no state.
* The three decoders' outputs (upsampled to full size) go through a 1×1 conv (3C→3), LeakyReLU, a
  3×3 conv (3→3); that is the rain, and the output is ``input − rain``.

Every upsampling is ``F.upsample(..., size)`` (nearest, legacy index rule); every pooling floors, so
odd sizes work as long as the coarsest inner scale keeps one pixel: sides of at least
``4 · 2**(scales-1)`` = 32 px. The official code has no rule for smaller inputs (it fails); this module
replicate-pads them to that size and crops the output back (our reconstruction).

Input convention: the official code reads images with OpenCV, so it sees **BGR** in [0, 1]; this
module takes and returns RGB in [0, 1] and flips the channel order around the network, so a network
trained here has the official layout (first and last convolutions in BGR order). The output is not
clamped (the official ``eval.py`` scores the clipped float output; ``show.py`` saves images with
OpenCV's rounding, hence ``official_quantize="round"``).

Options the official code also has (``settings.uint``): ``recurrent="lstm"`` (its LSTM branch, where the
state list is aliased so the 1/4-scale state reaches full size from its 1/2-size copy; reproduced) and
``"rnn"`` (a tanh cell). ``Net_cross``/``single`` ablations and the unused ``ODE_DerainNet`` are not
implemented. Parameters that exist in the official network but never take part in its forward pass
(the state convolutions of the first cell of each chain, the c-state fusions outside LSTM mode) are kept
so the count is exact, and frozen (``requires_grad=False``): the official training never changes them
either (they get no gradient), and frozen they cost the optimizer and DDP nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

RECURRENT_UNITS = ("gru", "lstm", "rnn")
PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    # CPU-trainable: ~40 k parameters, same topology (3 sub-networks, 4 inner scales, GRU cross-scale)
    "small": {"channels": 8, "units": 2, "convs": 2},
}

# The official recipe (config/settings.py and config/train.py of Ohraincu/DCSFN) as run-config overrides.
RECIPE: dict[str, Any] = {
    "loss": "ssim",  # settings.ssim_loss=True: loss = -SSIM (cal_ssim.py: Gaussian 11/1.5, zero padding), = kit "ssim"
    "optimizer": "adam",  # train.py: Adam(net.parameters(), lr=settings.lr), default betas, no weight decay
    "lr": 5e-4,  # settings.lr = 0.0005
    "lr_milestones": (0.6, 0.8),  # settings.l1/l2 = 3/5 and 4/5 of total_step (MultiStepLR, stepped per iteration)
    "lr_gamma": 0.1,  # train.py: MultiStepLR(..., gamma=0.1)
    "crop": 64,  # settings.patch_size = 64
    "batch": 24,  # settings.batch_size = 24
    "epochs": 800,  # settings.epoch = 800 (set for Rain100H); an epoch is pairs/batch iterations, as in the kit
    "seed": 66,  # train.py: torch.manual_seed(66)
}
# Not representable in a run config: settings.aug_data=True crops (64 ± 16) px then resizes to 64, flips
# horizontally and rotates by a random angle in [-30, 30) degrees.


@dataclass(frozen=True)
class DCSFNConfig:
    channels: int = 20  # settings.channel
    units: int = 16  # settings.Num_encoder: inner-scale blocks per encoder and per decoder
    scales: int = 4  # settings.scale_num: pooling scales 1, 2, 4, 8 inside each block
    convs: int = 4  # settings.conv_num: 3x3 convolutions per scale inside each block
    recurrent: str = "gru"  # settings.uint: "gru" (default, the paper's), "lstm" or "rnn"

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="DCSFNConfig.")
        if self.channels < 1 or self.units < 1 or self.convs < 1 or not 1 <= self.scales <= 4:
            raise ConfigError(f"invalid DCSFN config {self}: channels, units, convs >= 1 and scales in 1..4")
        if self.recurrent not in RECURRENT_UNITS:
            raise ConfigError(f"DCSFNConfig.recurrent={self.recurrent!r}; expected one of {list(RECURRENT_UNITS)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DCSFNConfig":
        """Strict: unknown keys raise ConfigError. ``preset`` (official|small) fills the keys not given."""
        return strict_from_dict(cls, d, "DCSFN config", sort_valid=True, presets=PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def min_side(self) -> int:
        """Smallest side the network sees without padding: the 1/4 sub-network pools by 2**(scales-1) more."""
        return 4 * 2 ** (self.scales - 1)


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2), nn.LeakyReLU(0.2))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest upsampling to ``like``'s size (the official ``F.upsample(x, [h, w])``)."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class InnerScaleBlock(nn.Module):
    """Multi-scale block: pooled paths from coarse to fine, each fused with the coarser result, then all."""

    def __init__(self, c: int, scales: int, convs: int) -> None:
        super().__init__()
        self.paths = nn.ModuleList(nn.Sequential(*[_conv(c, c, 3) for _ in range(convs)]) for _ in range(scales))
        self.fuse = nn.ModuleList(_conv(2 * c, c, 1) for _ in range(scales - 1))
        self.fuse_all = _conv(scales * c, c, 1) if scales > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.paths)
        pooled = [x] + [F.max_pool2d(x, 2 ** s) for s in range(1, n)]
        outs: list[torch.Tensor] = [x] * n
        outs[-1] = self.paths[-1](pooled[-1])
        for s in range(n - 2, -1, -1):
            outs[s] = self.paths[s](self.fuse[s](torch.cat([pooled[s], _up(outs[s + 1], pooled[s])], 1)))
        if self.fuse_all is None:
            return outs[0] + x
        return self.fuse_all(torch.cat([outs[0]] + [_up(o, x) for o in outs[1:]], 1)) + x


class DenseCoder(nn.Module):
    """Encoder (``skips=None``) or decoder of densely connected inner-scale blocks."""

    def __init__(self, cfg: DCSFNConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.blocks = nn.ModuleList(InnerScaleBlock(c, cfg.scales, cfg.convs) for _ in range(cfg.units))
        self.reduce = nn.ModuleList(_conv((i + 2) * c, c, 1) for i in range(cfg.units))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dense, outs, out = [x], [], x
        for i, (block, reduce) in enumerate(zip(self.blocks, self.reduce)):
            tmp = block(out if skips is None else out + skips[i])
            outs.append(tmp)
            dense.append(tmp)
            out = reduce(torch.cat(dense, 1))
        return out, outs


class RecurrentCell(nn.Module):
    """The official ConvGRU / ConvLSTM / ConvRNN cell (3x3 convs, LeakyReLU(0.2) on the new state).

    ``stateful=False`` is the first cell of a chain, called without a state: the convolutions that
    would read the state (and, for the GRU, the reset gate; for the LSTM, the forget gate) are built,
    as in the official module, but frozen because they never take part.
    """

    def __init__(self, kind: str, c: int, stateful: bool) -> None:
        super().__init__()
        self.kind, self.stateful = kind, stateful
        gates = {"gru": "zrn", "lstm": "fioj", "rnn": "x"}[kind]
        self.conv_x = nn.ModuleDict({g: nn.Conv2d(c, c, 3, 1, 1) for g in gates})
        self.conv_h = nn.ModuleDict({g: nn.Conv2d(c, c, 3, 1, 1) for g in gates})
        if not stateful:
            unused = {"gru": "r", "lstm": "f", "rnn": ""}[kind]
            for p in list(self.conv_h.parameters()) + [p for g in unused for p in self.conv_x[g].parameters()]:
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        cx, ch = self.conv_x, self.conv_h
        if self.kind == "gru":
            if state is None:
                h = torch.sigmoid(cx["z"](x)) * torch.tanh(cx["n"](x))
            else:
                z = torch.sigmoid(cx["z"](x) + ch["z"](state))
                r = torch.sigmoid(cx["r"](x) + ch["r"](state))
                n = torch.tanh(cx["n"](x) + ch["n"](r * state))
                h = (1 - z) * state + z * n
            h = F.leaky_relu(h, 0.2)
            return h, h
        if self.kind == "rnn":
            h = torch.tanh(cx["x"](x) + (0 if state is None else ch["x"](state)))
            h = F.leaky_relu(h, 0.2)
            return h, h
        if state is None:  # LSTM without a state: no forget gate, h = o * c (no tanh), as in the official cell
            c = torch.sigmoid(cx["i"](x)) * torch.tanh(cx["j"](x))
            h = torch.sigmoid(cx["o"](x)) * c
        else:
            h0, c0 = state
            f = torch.sigmoid(cx["f"](x) + ch["f"](h0))
            i = torch.sigmoid(cx["i"](x) + ch["i"](h0))
            o = torch.sigmoid(cx["o"](x) + ch["o"](h0))
            c = f * c0 + i * torch.tanh(cx["j"](x) + ch["j"](h0))
            h = o * torch.tanh(c)
        h = F.leaky_relu(h, 0.2)
        return h, (h, c)


class DCSFN(nn.Module):
    """DCSFN: ``forward(rgb)`` takes and returns b×3×H×W RGB in [0, 1] (see the module docstring)."""

    def __init__(self, config: DCSFNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DCSFNConfig()
        c, kind = cfg.channels, cfg.recurrent
        self.convert = _conv(3, c, 3)
        self.encoders = nn.ModuleList(DenseCoder(cfg) for _ in range(3))  # scales 1, 1/2, 1/4
        self.decoders = nn.ModuleList(DenseCoder(cfg) for _ in range(3))
        # coarse-to-fine chain (official rec1_4 -> rec1_2 -> rec1_1) and fine-to-coarse (rec2_1 -> rec2_2 -> rec2_4)
        self.down_up = nn.ModuleList([RecurrentCell(kind, c, True), RecurrentCell(kind, c, True),
                                      RecurrentCell(kind, c, False)])  # index = scale (0: full, 1: 1/2, 2: 1/4)
        self.up_down = nn.ModuleList([RecurrentCell(kind, c, False), RecurrentCell(kind, c, True),
                                      RecurrentCell(kind, c, True)])
        # 1x1 fusions of two upsampled states for the chain's last cell: h and (LSTM only) c
        self.fuse_h = nn.ModuleList([_conv(2 * c, c, 1), _conv(2 * c, c, 1)])
        self.fuse_c = nn.ModuleList([_conv(2 * c, c, 1), _conv(2 * c, c, 1)])
        if kind != "lstm":
            self.fuse_c.requires_grad_(False)  # exists in the official network, used by the LSTM branch only
        self.merge = nn.Sequential(nn.Conv2d(3 * c, 3, 1), nn.LeakyReLU(0.2), nn.Conv2d(3, 3, 3, 1, 1))

    def min_input_side(self) -> int:
        """Crops smaller than this would be padded (see the module docstring)."""
        return self.config.min_side()

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"DCSFN expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        h, w = rgb.shape[-2:]
        side = self.config.min_side()
        pad_h, pad_w = max(side - h, 0), max(side - w, 0)
        x = F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else rgb
        out = self._net(x.flip(1)).flip(1)  # the official network works in OpenCV's BGR order
        return out[..., :h, :w]

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.convert(x)
        feats = [f1, F.max_pool2d(f1, 2), F.max_pool2d(f1, 4)]
        enc = [coder(f) for coder, f in zip(self.encoders, feats)]
        cur = self._cross([e[0] for e in enc], feats)
        dec = [coder(cur[s], enc[s][1])[0] for s, coder in enumerate(self.decoders)]
        return x - self.merge(torch.cat([dec[0], _up(dec[1], f1), _up(dec[2], f1)], 1))

    def _cross(self, cur: list[torch.Tensor], feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The two recurrent passes between encoders and decoders (1/4 -> 1 and back)."""
        lstm = self.config.recurrent == "lstm"
        out1 = [cur[0]] * 3
        out1[2], s4 = self.down_up[2](cur[2])
        out1[1], s2 = self.down_up[1](cur[1], self._resize(s4, feats[1]))
        s4 = self._resize(self._resize(s4, feats[1]) if lstm else s4, feats[0])  # LSTM: official list aliasing
        out1[0], _ = self.down_up[0](cur[0], self._fuse(0, self._resize(s2, feats[0]), s4))
        out2 = [cur[0]] * 3
        out2[0], s1 = self.up_down[0](out1[0])
        out2[1], s2 = self.up_down[1](out1[1], self._resize(s1, feats[1]))
        s1 = self._resize(self._resize(s1, feats[1]) if lstm else s1, feats[2])
        out2[2], _ = self.up_down[2](out1[2], self._fuse(1, s1, self._resize(s2, feats[2])))
        return out2

    @staticmethod
    def _resize(state: Any, like: torch.Tensor) -> Any:
        if isinstance(state, tuple):
            return tuple(_up(s, like) for s in state)
        return _up(state, like)

    def _fuse(self, i: int, a: Any, b: Any) -> Any:
        """1x1 fusion of two states (official fusion_1_2_* / fusion_2_2_*; the order of ``a, b`` is theirs)."""
        if isinstance(a, tuple):
            return (self.fuse_h[i](torch.cat([a[0], b[0]], 1)), self.fuse_c[i](torch.cat([a[1], b[1]], 1)))
        return self.fuse_h[i](torch.cat([a, b], 1))


def load_dcsfn_weights(model: DCSFN, path: str | Path) -> DCSFN:
    """Load kit weights (``.safetensors`` export or kit checkpoint) strictly; CheckpointError names the file."""
    return load_weights_file(model, path, "DCSFN")


__all__ = ["DCSFN", "DCSFNConfig", "PRESETS", "RECIPE", "load_dcsfn_weights"]
