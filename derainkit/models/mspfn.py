"""MSPFN (Jiang et al., CVPR 2020): multi-scale progressive fusion network, in PyTorch from the TF graph.

The official code is TensorFlow 1.x (kuijiang94/MSPFN, ``model/MSPFN.py``); there is no official PyTorch
version. This module rebuilds that graph layer for layer, with TensorFlow's padding arithmetic:

* Input pyramid: the rainy image and its 2× and 4× box-downscaled copies (a fixed averaging
  convolution, stride K, 'SAME'); each gets a 3×3 transposed convolution (stride 1, 3→64, no bias —
  the code's ``deconv_layer``) and a PReLU whose slopes start at 0.
* Residual memory module (RMM) per scale, coarse to fine: a 3×3 (64→32) + PReLU, one step of a
  convolutional LSTM cell from a zero state (64, 128 and 256 features at 1/4, 1/2 and full size;
  gates i, j, f, o from one 3×3 conv of [input, h] with bias, forget bias 1, ``h = tanh(c)·σ(o)``), a
  3×3 back to 64 + PReLU, plus the scale's head features. The 1/4 result is brought to 1/2 and full
  size by stride-2 transposed convolutions and added to the finer scales' inputs before their RMM.
* 17 multi-scale fusion stages (the code's ``URAB``; the paper's coarse-to-fine progressive
  fusion): at each scale a stride-2 3×3 conv + PReLU, then residual channel-attention blocks (RCAB:
  conv3×3+PReLU, conv3×3, global mean, 1×1 to C/4 + PReLU, 1×1 to C + sigmoid, ``x + f·s``; 1 at 1/4,
  3 at 1/2 and 3 at full size), a stride-2 transposed conv of [short, RCAB output] (128→64) + PReLU,
  added to the scale's running features. Coarser results are upsampled (stride-2 transposed
  convs + PReLU) and added before the finer scales' stages.
* Reconstruction: per scale [running, RMM output] → 3×3 (128→64) + PReLU; 1/4 → 1/2 (stride 2);
  [that, 1/2] → full (stride 2); [full, that] → 3×3 (128→32) + PReLU → 3×3 (32→3) is the rain; the
  output is ``input − rain``.

Parameter count: 20,995,776 (= the "21.00 M" quoted for MSPFN), counted here from the TF graph's
variables: every ``deconv_layer``/``conv_layer`` weight (no biases), one PReLU slope vector per call,
the three LSTM convolutions with bias, and the RCABs' ``tf.layers.conv2d`` kernels with biases (no
TensorFlow run was needed: each variable's shape is written in the graph code). The released
pretrained model is a smaller graph, ``TEST_MSPFN_M17N1.py``, with one RCAB per scale (15,823,424
parameters); the README says that model trails the paper's figures by 0.1–0.2 dB. The full graph (the
one the training script builds, and the 21.00 M count) is the default here; ``preset: m17n1`` builds
the released one.

TensorFlow details kept: 'SAME' padding of stride-2 convolutions pads the bottom/right first;
``conv2d_transpose`` to an output size n crops a full transposed convolution at TF's padding offset
(one-pixel shifts otherwise). Stride-1 ``deconv_layer``s are transposed convolutions with padding 1.
Initialisation follows the code: Xavier-uniform for conv/deconv weights and the RCAB kernels (zero
biases), truncated normal (σ = 1e-3) for the LSTM kernels, PReLU slopes 0.

Input convention: the official scripts read BGR with OpenCV and feed ``img/127.5 − 1``; the network
output is mapped back with ``np.uint8(clip((y + 1)·127.5))`` (truncation, ``official_quantize="trunc"``).
This module takes RGB in [0, 1], flips to BGR, scales to [−1, 1] and maps the output back to RGB [0, 1]
(not clamped). The graph's fixed output shapes need H and W divisible by 4 (at 1/8, inside the 1/4
stages, TensorFlow handles odd sizes, and so does this module); other sizes are reflect-padded at the
bottom/right to the next multiple of 4 and the output cropped back (our reconstruction).

Structural facts not in the graph: in each call the LSTM starts from a zero state, so its state
weights and forget gate never matter (they get exactly zero gradient in the official training too);
they are kept so the count is exact, but frozen, and the zero-state step is computed from the input
alone. The official training loss (Charbonnier, ε = 1e-3, plus 0.05 × Charbonnier of the Laplacian,
in the [−1, 1] scale) is ``derainkit.losses.peers_b.mspfn_loss``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "m17n1": {"rcabs": (1, 1, 1)},  # the released pretrained graph (TEST_MSPFN_M17N1.py)
    "small": {"channels": 16, "lstm_features": (64, 32, 16), "lstm_input": 8, "urabs": 2, "rcabs": (1, 1, 1),
              "tail_channels": 8},
}

# The official training script (model/train_MSPFN.py) as run-config overrides.
RECIPE: dict[str, Any] = {
    "loss": "mspfn",  # MSPFN.inference_losses: Charbonnier + 0.05 x Laplacian Charbonnier (derainkit.losses.peers_b)
    "optimizer": "adam",  # tf.train.AdamOptimizer (beta1 0.9, beta2 0.999, epsilon 1e-8: TF defaults)
    "lr": 5e-4,  # start_learning_rate = 5e-4
    "lr_milestones": (),  # the official decay is exponential (LR_SCHEDULE):
    "lr_policy": "exponential",  # tf.train.exponential_decay(staircase=False) ...
    "lr_gamma": 0.8,  # decay_rate 0.8
    "lr_decay_every": 20000,  # decay_steps 20000
    "lr_floor": 1e-6,  # ... + 1e-6
    "crop": 96,  # placeholders [None, 96, 96, 3]
    "batch": 12,  # batch_size = 12
    "epochs": 50,  # the released model and test script restore 'epoch50'; the training loop itself never stops
}
# tf.train.exponential_decay(5e-4, step, 20000, decay_rate=0.8, staircase=False) + 1e-6:
# lr(t) = 5e-4 * 0.8 ** (t / 20000) + 1e-6. The kit's run config has step schedules only.
LR_SCHEDULE = {"kind": "exponential", "lr0": 5e-4, "decay_rate": 0.8, "decay_steps": 20000, "floor_add": 1e-6}
# Not representable either: train_MSPFN.py rotates/flips each batch by one of 8 dihedral transforms.


@dataclass(frozen=True)
class MSPFNConfig:
    channels: int = 64  # feature width of every scale
    lstm_features: tuple[int, int, int] = (256, 128, 64)  # LSTM widths at full, 1/2, 1/4 (cell, cell2, cell4)
    lstm_input: int = 32  # width fed to each LSTM cell
    urabs: int = 17  # fusion stages ("for n in range(17)")
    rcabs: tuple[int, int, int] = (3, 3, 1)  # RCABs per stage at full, 1/2, 1/4 size (MSPFN.py's loops: 3, 3, 1)
    reduction: int = 4  # RCAB channel reduction
    tail_channels: int = 32  # 'rnn5' width

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="MSPFNConfig.")
        if len(self.lstm_features) != 3 or len(self.rcabs) != 3:
            raise ConfigError(f"MSPFNConfig: lstm_features and rcabs need three values (full, 1/2, 1/4), got {self}")
        if min(self.channels, self.lstm_input, self.tail_channels, *self.lstm_features) < 1 or self.urabs < 1:
            raise ConfigError(f"invalid MSPFN config {self}: widths and urabs must be >= 1")
        if min(self.rcabs) < 0 or not 1 <= self.reduction <= self.channels:
            raise ConfigError(f"invalid MSPFN config {self}: rcabs >= 0 and 1 <= reduction <= channels")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MSPFNConfig":
        """Strict: unknown keys raise ConfigError. ``preset`` (official|m17n1|small) fills keys not given."""
        return strict_from_dict(cls, d, "MSPFN config", sort_valid=True, presets=PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def _same_pads(size: int, k: int, s: int, out: int | None = None) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of a conv with kernel k, stride s (out: its output size)."""
    out = math.ceil(size / s) if out is None else out
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class TFConv(nn.Module):
    """``conv_layer``: 3x3 conv without bias, stride 2, TF 'SAME' padding; then a PReLU (slopes from 0)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(cout, cin, 3, 3)))
        self.act = nn.PReLU(cout, init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (t, b), (l, r) = _same_pads(x.shape[-2], 3, 2), _same_pads(x.shape[-1], 3, 2)
        return self.act(F.conv2d(F.pad(x, (l, r, t, b)), self.weight, stride=2))


class TFDeconv(nn.Module):
    """``deconv_layer``: 3x3 transposed conv without bias (stride 1 or 2, TF output size), optional PReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(cin, cout, 3, 3)))
        self.act = nn.PReLU(cout, init=0.0) if act else None

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.stride == 1:
            y = F.conv_transpose2d(x, self.weight, padding=1)
        else:  # TF: the transpose of a SAME stride-2 conv from `size` to x's size
            y = F.conv_transpose2d(x, self.weight, stride=2)
            (t, _), (l, _) = (_same_pads(size[0], 3, 2, x.shape[-2]), _same_pads(size[1], 3, 2, x.shape[-1]))
            y = y[..., t:t + size[0], l:l + size[1]]
        return y if self.act is None else self.act(y)


class ZeroStateLSTM(nn.Module):
    """One step of the official BasicConvLSTMCell from a zero state: c = σ(i)·tanh(j), h = tanh(c)·σ(o).

    The cell's single kernel over [input, h] is split: the input part of the i, j, o gates trains; the
    forget gate (multiplies c = 0) and the h part (h = 0) are kept for the count and frozen.
    """

    def __init__(self, cin: int, features: int) -> None:
        super().__init__()
        self.ijo = nn.Conv2d(cin, 3 * features, 3, 1, 1)
        self.unused_f = nn.Conv2d(cin, features, 3, 1, 1).requires_grad_(False)
        self.unused_h = nn.Parameter(torch.zeros(4 * features, features, 3, 3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, j, o = self.ijo(x).chunk(3, dim=1)
        return torch.tanh(torch.sigmoid(i) * torch.tanh(j)) * torch.sigmoid(o)


class RCAB(nn.Module):
    """Residual channel-attention block (tf.layers.conv2d kernels with biases)."""

    def __init__(self, c: int, reduction: int) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(c, c, 3, 1, 1), nn.PReLU(c, init=0.0)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.squeeze, self.act2 = nn.Conv2d(c, c // reduction, 1), nn.PReLU(c // reduction, init=0.0)
        self.excite = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv2(self.act1(self.conv1(x)))
        s = torch.sigmoid(self.excite(self.act2(self.squeeze(f.mean(dim=(2, 3), keepdim=True)))))
        return x + f * s


class FusionStage(nn.Module):
    """One of the 17 'URAB' stages: coarse (1/4) to fine, each scale a down-RCABs-up residual unit."""

    def __init__(self, cfg: MSPFNConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.down = nn.ModuleList(TFConv(c, c) for _ in range(3))  # index: 0 full, 1 half, 2 quarter
        self.rcabs = nn.ModuleList(nn.Sequential(*[RCAB(c, cfg.reduction) for _ in range(n)]) for n in cfg.rcabs)
        self.up = nn.ModuleList(TFDeconv(2 * c, c, 2) for _ in range(3))
        self.q_to_h, self.h_to_f, self.q_to_f = TFDeconv(c, c, 2), TFDeconv(c, c, 2), TFDeconv(c, c, 2)

    def _unit(self, s: int, x: torch.Tensor) -> torch.Tensor:
        short = self.down[s](x)
        return self.up[s](torch.cat([short, self.rcabs[s](short)], 1), x.shape[-2:])

    def forward(self, full: torch.Tensor, half: torch.Tensor, quarter: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quarter = quarter + self._unit(2, quarter)
        q2h = self.q_to_h(quarter, half.shape[-2:])
        half = half + self._unit(1, half + q2h)
        full_in = full + self.q_to_f(q2h, full.shape[-2:]) + self.h_to_f(half, full.shape[-2:])
        return full + self._unit(0, full_in), half, quarter


class MSPFN(nn.Module):
    """MSPFN: ``forward(rgb)`` takes and returns b×3×H×W RGB in [0, 1] (see the module docstring)."""

    def __init__(self, config: MSPFNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MSPFNConfig()
        c, li = cfg.channels, cfg.lstm_input
        self.head = nn.ModuleList(TFDeconv(3, c) for _ in range(3))  # official rnn1, rnn2, rnn4
        self.lstm_in = nn.ModuleList(TFDeconv(c, li) for _ in range(3))
        self.lstm = nn.ModuleList(ZeroStateLSTM(li, f) for f in cfg.lstm_features)
        self.lstm_out = nn.ModuleList(TFDeconv(f, c) for f in cfg.lstm_features)
        self.rmm_q_to_h, self.rmm_h_to_f, self.rmm_q_to_f = TFDeconv(c, c, 2), TFDeconv(c, c, 2), TFDeconv(c, c, 2)
        self.stages = nn.ModuleList(FusionStage(cfg) for _ in range(cfg.urabs))
        self.recon = nn.ModuleList(TFDeconv(2 * c, c) for _ in range(3))
        self.tail_q_to_h, self.tail_h_to_f = TFDeconv(c, c, 2), TFDeconv(2 * c, c, 2)
        self.tail = TFDeconv(2 * c, cfg.tail_channels)
        self.out = TFDeconv(cfg.tail_channels, 3, act=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisers: Xavier-uniform kernels, zero biases, N(0, 1e-3) truncated LSTM kernels."""
        for m in self.modules():
            if isinstance(m, (TFConv, TFDeconv)):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, RCAB):
                for conv in (m.conv1, m.conv2, m.squeeze, m.excite):
                    nn.init.xavier_uniform_(conv.weight)
                    nn.init.zeros_(conv.bias)
            elif isinstance(m, ZeroStateLSTM):
                for w in (m.ijo.weight, m.unused_f.weight, m.unused_h):
                    nn.init.trunc_normal_(w, std=1e-3, a=-2e-3, b=2e-3)
                nn.init.zeros_(m.ijo.bias)
                nn.init.zeros_(m.unused_f.bias)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"MSPFN expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        h, w = rgb.shape[-2:]
        ph, pw = -h % 4, -w % 4
        x = rgb.flip(1) * 2.0 - 1.0  # official: BGR, img / 127.5 - 1
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > 3 else "replicate")
        y = x - self._rain(x)
        return ((y[..., :h, :w] + 1.0) * 0.5).flip(1)

    def _rain(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x, F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)]  # = the fixed K×K/K² 'SAME' conv at multiples of 4
        heads = [hd(p) for hd, p in zip(self.head, pyramid)]
        size = heads[0].shape[-2:]
        quarter = self._rmm(2, heads[2], heads[2])
        q2h = self.rmm_q_to_h(quarter, heads[1].shape[-2:])
        half = self._rmm(1, heads[1] + q2h, heads[1])
        full = self._rmm(0, heads[0] + self.rmm_h_to_f(half, size) + self.rmm_q_to_f(q2h, size), heads[0])
        rmm = (full, half, quarter)
        for stage in self.stages:
            full, half, quarter = stage(full, half, quarter)
        full, half, quarter = (self.recon[s](torch.cat([r, m], 1)) for s, (r, m) in
                               enumerate(zip((full, half, quarter), rmm)))
        q2h = self.tail_q_to_h(quarter, half.shape[-2:])
        merged = self.tail_h_to_f(torch.cat([q2h, half], 1), size)
        return self.out(self.tail(torch.cat([full, merged], 1)))

    def _rmm(self, s: int, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Residual memory module of scale s on x (head plus coarser results); the residual is the head alone."""
        return self.lstm_out[s](self.lstm[s](self.lstm_in[s](x))) + head


def load_mspfn_weights(model: MSPFN, path: str | Path) -> MSPFN:
    """Load kit weights (``.safetensors`` export or kit checkpoint) strictly; CheckpointError names the file."""
    return load_weights_file(model, path, "MSPFN")


__all__ = ["LR_SCHEDULE", "MSPFN", "MSPFNConfig", "PRESETS", "RECIPE", "load_mspfn_weights"]
