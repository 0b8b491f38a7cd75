"""RCDNet (Wang, Xie, Zhao, Meng, CVPR 2020): the rain convolutional dictionary network.

The model (paper, Sec. 3): a rainy image O = B + Σ_n C_n ⊗ M_n, rain kernels C (a convolutional dictionary)
and sparse rain maps M; proximal gradient steps on M and B, unfolded into S stages whose proximal
operators are small ResNets. As in the official code (hongwang01/RCDNet, ``RCDNet_code/for_syn/src/model/
rcdnet.py``; defaults S = 17 stages, 32 rain maps, 32 dual channels Z, 4 residual blocks):

* Initialisation: Z⁰ = conv(O, a 3×3 filter bank, init 1/9); [B⁰, Z] = ProxB⁰([O, Z⁰]).
* Stage 1: M¹ = ProxM¹(Cᵀ₀ ⊛ ReLU(O − B⁰ − τ)) with the initial kernels C₀ (τ learnt, init 1);
  B¹ from ProxB¹([B⁰ − η/10·(B⁰ − O + C⊗M¹), Z]) (η init 5).
* Stages 2..S: M ← ProxM(M − η_M/10 · Cᵀ ⊛ (C⊗M − (O − B))), B ← ProxB([B − η_B/10 · (B − O + C⊗M), Z]),
  with per-stage step sizes (init 1 and 5); every C here is one kernel set shared by all stages
  (the code's ``self.conv[1]``, commented "inter-stage sharing").
* Kernels enter every convolution divided by 10 ("for controlling the updating speed"), 9×9, padding 4.
* ProxB: 4 residual blocks (conv-BN-ReLU-conv-BN, add, ReLU) on 3 + 32 channels; ProxM: the same on 32
  channels followed by ReLU(· − τ_c) with a per-channel threshold (init 0.5). A last ProxB refines the
  final [B, Z]; the network returns B⁰, the S + 1 backgrounds and the S rain layers C⊗M.

Parameter count 3,166,355, as the official module reports it. That count includes parameters its
forward pass never reads: the stacked kernels ``self.conv`` of shape (S−1, 3, 32, 9, 9) of which only
slice 1 is used, an ``Mnet`` built for the initialisation but never called, and the step size
``eta1``. They never change in the official training (no gradient), so here they exist for the count
(``official_unused=True``, the default) and are frozen; ``official_unused=False`` drops them
(2,975,186 parameters, the same function).

Modern PyTorch fix. The official code builds several parameters with ``.expand()``: the per-stage step
sizes, the stacked kernels, the 3×3 filter bank and ProxM's thresholds are views of one value, so all
their elements share memory. Adam's in-place update refuses such tensors in current PyTorch (on CPU).
On the GPU where the paper was trained they did not share memory: ``model.to('cuda')`` copies an
expanded tensor into a dense one, so each step size, filter and channel threshold trained on its own.
This module creates them as ordinary (dense, independent) tensors with the same initial values and
shapes — the GPU behaviour, and the same parameter count.

Initial rain kernels: the official code loads ``init_kernel.mat``, documented as the output of
``Rainkernel/init_rain_kernel.m``. This module derives its kernels from that published procedure
(``initial_rain_kernels``): kernels 1–12 are ``MyRainK(9, 2.5 + 3i/12, 0.1, 0.25)`` and 13–32
``MyRainK(9, 2 + 3i/12, 0.2, 0.5)`` — a Gaussian stretched vertically by the first factor, with a flat
core, normalised to sum 1 — repeated for the three colour channels (with fewer rain maps, the first
ones). The ``init_kernel.mat`` in the repository is *not* that output: its kernels have other widths and
do not sum to 1 (0.14–1.0), so it was made by some other procedure. ``init_kernel_file`` loads such a
file (its ``C9`` array, 3 × num_m × k × k) instead, for an exactly official initialisation.

Input convention: the official framework (EDSR-derived) feeds RGB in [0, 255] (``rgb_range=255``); the
thresholds and step sizes live in that scale. This module takes RGB in [0, 1], multiplies by 255 and
divides every returned image by 255. Outputs are not clamped (the official ``quantize`` rounds:
``official_quantize="round"``). All layers preserve size: any H×W works, odd included.

Training (``forward(x, return_stages=True)`` gives the stage outputs): the official loss is
Σ_j 0.1·MSE(B_j, clean) + 0.1·MSE(R_j, rainy − clean) over the S stages, + MSE(B_final, clean)
+ 0.9·MSE(R_S, rainy − clean) + 0.1·MSE(B⁰, clean), on the 0–255 scale
(``derainkit.losses.peers_b.rcdnet_stage_loss``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.weights import load_weights_file

RGB_RANGE = 255.0  # the official framework's rgb_range
PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "small": {"stages": 4, "num_m": 8, "num_z": 8, "res_blocks": 2, "kernel_size": 5},
}

# The official training command for Rain100L (README; option.py, trainer.py, utility.py) as overrides.
RECIPE: dict[str, Any] = {
    "loss": "rcdnet_stages",  # the official multi-stage sum (peers_b.rcdnet_stage_loss, registered by that name)
    "optimizer": "adam",  # --optimizer ADAM, beta1 0.9, beta2 0.999, epsilon 1e-8, weight_decay 0
    "lr": 1e-3,  # --lr 1e-3
    "lr_milestones": (0.25, 0.5, 0.75),  # StepLR(step_size=--lr_decay 25) over --epochs 100
    "lr_gamma": 0.2,  # --gamma 0.2
    "crop": 64,  # --patch_size 64
    "batch": 16,  # --batch_size 16
    # 100 epochs; an official epoch repeats the data to about --test_every=1000 batches (srdata.py: repeat =
    # 1000 // (200 // 16) = 83 passes over RainTrainL's 200 pairs, 16,600 samples = 1,038 batches)
    "iterations": 103_800,
}
STAGE_LOSS = "derainkit.losses.peers_b:rcdnet_stage_loss"  # what the official trainer minimises


@dataclass(frozen=True)
class RCDNetConfig:
    stages: int = 17  # --stage S (includes the initialisation stage)
    num_m: int = 32  # --num_M rain maps (= rain kernels)
    num_z: int = 32  # --num_Z dual channels carried with B
    res_blocks: int = 4  # residual blocks in each proximal network (the code's four resx/resm)
    kernel_size: int = 9  # rain kernel size (init_kernel.mat: 9×9)
    official_unused: bool = True  # keep the official's never-used parameters (frozen) for its exact count
    init_kernel_file: str | None = None  # a .mat with the initial kernels as 'C9' (the official init_kernel.mat)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="RCDNetConfig.")
        if self.stages < 2 or self.num_m < 1 or self.num_z < 0 or self.res_blocks < 1:
            raise ConfigError(f"invalid RCDNet config {self}: stages >= 2, num_m >= 1, num_z >= 0, res_blocks >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"RCDNetConfig.kernel_size={self.kernel_size} must be an odd number >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RCDNetConfig":
        """Strict: unknown keys raise ConfigError. ``preset`` (official|small) fills the keys not given."""
        return strict_from_dict(cls, d, "RCDNet config", sort_valid=True, presets=PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rain_kernel(size: int, long: float, inner: float, std: float) -> np.ndarray:
    """MyRainK.m: a Gaussian with a flat core of half-width round(r·inner), stretched vertically by ``long``."""
    r = (size - 1) // 2
    y, x = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")  # rows y, columns x
    core = math.floor(r * inner + 0.5)  # MATLAB round (half away from zero; values are >= 0)
    x = np.sign(x) * (np.maximum(np.abs(x), core) - core)
    y = np.sign(y) * (np.maximum(np.abs(y), core) - core) / long
    h = np.exp(-(x * x + y * y) / (2.0 * std * std))
    h[h < np.finfo(np.float64).eps * h.max()] = 0.0
    return h / h.sum() if h.sum() != 0 else h


def initial_rain_kernels(num: int = 32, size: int = 9) -> torch.Tensor:
    """The official initial dictionary (init_rain_kernel.m), 3 × num × size × size, float32."""
    ks = [_rain_kernel(size, 2.5 + 3 / 12 * i, 0.1, 0.25) if i <= 12 else _rain_kernel(size, 2 + 3 / 12 * i, 0.2, 0.5)
          for i in range(1, num + 1)]
    return torch.from_numpy(np.stack(ks)).float().unsqueeze(0).repeat(3, 1, 1, 1)


def _kernels_from_mat(cfg: RCDNetConfig) -> torch.Tensor:
    """The 'C9' array of a .mat file (the official init_kernel.mat), checked against the config."""
    import scipy.io

    path = Path(cfg.init_kernel_file or "")
    try:
        c9 = scipy.io.loadmat(str(path))["C9"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"RCDNetConfig.init_kernel_file={str(path)!r}: cannot read a 'C9' array ({exc})") from None
    want = (3, cfg.num_m, cfg.kernel_size, cfg.kernel_size)
    if tuple(c9.shape) != want:
        raise ConfigError(f"RCDNetConfig.init_kernel_file={str(path)!r}: C9 has shape {tuple(c9.shape)}, "
                          f"this config needs {want} (set num_m / kernel_size to match)")
    return torch.from_numpy(np.asarray(c9, dtype=np.float32))


class ProxNet(nn.Module):
    """The official Xnet/Mnet body: residual blocks conv-BN-ReLU-conv-BN, add, ReLU; ``threshold`` adds
    Mnet's final ReLU(x − τ_c) with a per-channel τ (init 0.5)."""

    def __init__(self, channels: int, blocks: int, threshold: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels)) for _ in range(blocks))
        self.tau = nn.Parameter(torch.full((1, channels, 1, 1), 0.5)) if threshold else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.relu(x + block(x))
        return x if self.tau is None else F.relu(x - self.tau)


class RCDNetStages(NamedTuple):
    """Everything the official network returns, in [0, 1] units: B⁰, backgrounds (S stages + the refined
    final one; ``backgrounds[-1]`` is the output) and the S rain layers C⊗M."""

    b0: torch.Tensor
    backgrounds: list[torch.Tensor]
    rain_layers: list[torch.Tensor]


class RCDNet(nn.Module):
    """RCDNet: ``forward(rgb)`` takes and returns b×3×H×W RGB in [0, 1]; ``return_stages=True`` gives
    :class:`RCDNetStages` (for the official multi-stage loss)."""

    def __init__(self, config: RCDNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or RCDNetConfig()
        iters, k = cfg.stages - 1, cfg.kernel_size
        kernels = initial_rain_kernels(cfg.num_m, k) if cfg.init_kernel_file is None else _kernels_from_mat(cfg)
        self.pad = k // 2
        self.kernel0 = nn.Parameter(kernels.clone())  # official weight0: the initialisation stage's kernels
        self.kernel = nn.Parameter(kernels.clone())  # official self.conv[1]: shared by stages 1..S-1
        self.filter_z = nn.Parameter(torch.full((cfg.num_z, 3, 3, 3), 1.0 / 9.0))  # official w_z_f (dense here)
        self.tau = nn.Parameter(torch.ones(1))  # official tau: threshold of the first rain estimate
        self.eta_b0 = nn.Parameter(torch.full((1,), 5.0))  # official eta2
        self.eta_m = nn.Parameter(torch.ones(iters, 1))  # official eta11 (dense here)
        self.eta_b = nn.Parameter(torch.full((iters, 1), 5.0))  # official eta12 (dense here)
        self.prox_b0 = ProxNet(cfg.num_z + 3, cfg.res_blocks, threshold=False)  # official xnet
        self.prox_b = nn.ModuleList(ProxNet(cfg.num_z + 3, cfg.res_blocks, False) for _ in range(cfg.stages))
        self.prox_m = nn.ModuleList(ProxNet(cfg.num_m, cfg.res_blocks, True) for _ in range(cfg.stages))
        self.refine = ProxNet(cfg.num_z + 3, cfg.res_blocks, threshold=False)  # official fxnet
        if cfg.official_unused:  # exist in the official module, never read by its forward pass
            self.unused_kernels = nn.Parameter(kernels.unsqueeze(0).repeat(iters - 1, 1, 1, 1, 1), requires_grad=False)
            self.unused_mnet = ProxNet(cfg.num_m, cfg.res_blocks, threshold=True).requires_grad_(False)
            self.unused_eta_m0 = nn.Parameter(torch.ones(1), requires_grad=False)  # official eta1

    def forward(self, rgb: torch.Tensor, return_stages: bool = False) -> torch.Tensor | RCDNetStages:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"RCDNet expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        b0, bs, rs = self._unfold(rgb * RGB_RANGE)
        if not return_stages:
            return bs[-1] / RGB_RANGE
        return RCDNetStages(b0 / RGB_RANGE, [b / RGB_RANGE for b in bs], [r / RGB_RANGE for r in rs])

    def _unfold(self, o: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        p, c = self.pad, self.kernel / 10  # "/10 for controlling the updating speed"
        out = self.prox_b0(torch.cat([o, F.conv2d(o, self.filter_z, padding=1)], 1))
        b0, z = out[:, :3], out[:, 3:]
        m = self.prox_m[0](F.conv_transpose2d(F.relu(o - b0 - self.tau), self.kernel0 / 10, padding=p))
        rain = F.conv2d(m, c, padding=p)
        out = self.prox_b[0](torch.cat([b0 - self.eta_b0 / 10 * (b0 - (o - rain)), z], 1))
        b, z = out[:, :3], out[:, 3:]
        backgrounds, rains = [b], [rain]
        for i in range(self.config.stages - 1):
            grad_m = F.conv_transpose2d(rain - (o - b), c, padding=p)
            m = self.prox_m[i + 1](m - self.eta_m[i] / 10 * grad_m)
            rain = F.conv2d(m, c, padding=p)
            out = self.prox_b[i + 1](torch.cat([b - self.eta_b[i] / 10 * (b - (o - rain)), z], 1))
            b, z = out[:, :3], out[:, 3:]
            backgrounds.append(b)
            rains.append(rain)
        backgrounds.append(self.refine(out)[:, :3])
        return b0, backgrounds, rains


def load_rcdnet_weights(model: RCDNet, path: str | Path) -> RCDNet:
    """Load kit weights (``.safetensors`` export or kit checkpoint) strictly; CheckpointError names the file."""
    return load_weights_file(model, path, "RCDNet")


__all__ = ["PRESETS", "RECIPE", "RCDNet", "RCDNetConfig", "RCDNetStages", "STAGE_LOSS", "initial_rain_kernels",
           "load_rcdnet_weights"]
