"""MOSS (Huang, Yu, He, CVPR 2021): "Memory oriented transfer learning for semi-supervised image deraining".

MOSS is a deraining generator — an encoder–decoder with a memory of prototypical rain patterns at its
bottleneck, the items updated by a moving average of the features assigned to them ("self-supervised",
no gradient) — trained semi-supervised: supervised on synthetic pairs, and on unlabelled real images
against pseudo-labels from an EMA "target" copy of the network. **This module is the generator and its
supervised use only.** The semi-supervised part (an unpaired real-image stream, the EMA teacher, rain
re-injection into real images, a TV term) needs a training task of its own beside ``paired``; it is
not implemented here.

The official repository (hhb072/MOSS) holds two different generators:

``variant="cvpr2021"`` (default) — ``networks.py``/``test.py``, released in 2021 with the paper's trained
  model (DDN-SIRR): 2,855,939 parameters, the 2.86 M that MSGNN's Table 1 lists for MOSS. Head 3×3 conv
  (3→16); five encoder stages of four residual blocks (conv3×3-LeakyReLU(0.02)-conv3×3, 1×1 projection
  when widths change, no biases), each stage widening by 16 channels, the first three ending in 2×2
  average pooling; a memory of 512 items on the 96-channel bottleneck read by softmax attention over
  cosine similarities; five decoder stages (the last three starting with ×2 bilinear upsampling), each
  but the last followed by a fusion block with the encoder feature of the same size: the skip feature,
  batch-normalised without affine, is modulated either by (1 + γ(x), β(x)) from the decoder feature x
  (1×1 convs, zero-initialised) or by learnt per-channel (1 + γ, β), mixed by a sigmoid gate from the
  skip (the gate is zeroed for a random 20 % of the samples while training); then the head feature minus
  the decoder output, a 3×3 conv (with bias) and tanh.
``variant="stochastic"`` — ``train/networks.py``, uploaded in 2023 with the training code: 2,493,140
  parameters (the count in the kit's issue). A different generator that matches the authors' later
  extension ("memory-uncertainty", stochastic memory reads): 5×5 conv + pooling head to 1/4 size
  (3→32→64), twenty residual layers each with its own memory of 512 items read by a hard Gumbel-softmax
  (temperature decaying 1.0 → 0.03 by ×0.99998 per training step) and added with a learnt scale
  initialised to 0, the head feature minus that, and a pixel-shuffle tail (two ×2 steps, 5×5 convs) to
  3 channels and tanh. Its memory read draws Gumbel noise also in eval mode (as the official code), so
  its outputs are random unless the torch seed is fixed.

Memory semantics kept from the code: items (``nn.Embedding`` weights, N(0, 1) init) take no gradient;
each training forward moves every item towards the mean of the features whose nearest item it is
(rate 0.999) — an item nobody picked is multiplied by 0.999 — and the read uses the updated items. In
the ``cvpr2021`` generator the update is also *computed* in eval mode (not stored) and used for the read,
so an eval output depends slightly on the other images in the batch. Items are frozen parameters here
(counted, saved, no optimizer state).

Input convention: RGB normalised to [−1, 1] (``Normalize(0.5, 0.5)``), output tanh in [−1, 1], mapped
back by ``·0.5 + 0.5``; this module takes and returns RGB in [0, 1] (not clamped). The official
``test.py`` scores ``np.array(255·y, dtype=uint8)`` (truncation: ``official_quantize="trunc"``), though the
images it saves are rounded by ``save_image``. Sizes: the ``cvpr2021`` generator needs H, W divisible
by 2**num_scales (8); ``test.py`` resizes real images bicubically to the next multiple of 8 and back
(``odd_size="resize"``); the default ``"pad"`` reflect-pads bottom/right and crops instead (our
reconstruction; it does not blur the output). The ``stochastic`` one needs multiples of 4 (padded).

Initialisation: ``cvpr2021`` — PyTorch defaults with the fusion γ/β convs zeroed (the official
constructor; there is no released training code for it); ``stochastic`` — truncated normal (σ 0.02) for
every conv, as ``MemoryAE._init_weights``. Recipe: the 2023 training code's supervised phase
(``train_sl``), used for both generators (the paper's own schedule for the 2021 generator is not public).
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

VARIANTS = ("cvpr2021", "stochastic")
ODD_SIZE = ("pad", "resize")
_DEFAULTS: dict[str, dict[str, Any]] = {
    # test.yaml of the 2021 release (plus networks.py's moving_average_rate default)
    "cvpr2021": {"ngf": 16, "num_blocks": 5, "num_scales": 3, "num_layers": 4, "delta": 16, "kdim": 512,
                 "moving_average_rate": 0.999},
    # train/config.yaml of the 2023 upload
    "stochastic": {"ngf": 32, "num_layers": 20, "kdim": 512, "moving_average_rate": 0.999, "max_t": 1.0,
                   "min_t": 0.03, "decay_alpha": 0.99998},
}
PRESETS: dict[str, dict[str, Any]] = {
    "official": {},
    "small": {"ngf": 8, "num_blocks": 3, "num_scales": 2, "num_layers": 1, "delta": 8, "kdim": 32},
    "stochastic-small": {"variant": "stochastic", "ngf": 8, "num_layers": 2, "kdim": 32},
}

# train/config.yaml + train/train.py (supervised phase train_sl) of hhb072/MOSS as run-config overrides.
RECIPE: dict[str, Any] = {
    "loss": "l1",  # train_sl: model.get_l1_loss(preds, label) (in the [-1, 1] scale: 2x the kit's l1, same for Adam)
    "optimizer": "adam",  # optim.Adam(netG.parameters(), lr=learning_rate_g), default betas
    "lr": 2e-4,  # learning_rate_g: 0.0002
    "lr_milestones": (),  # no scheduler in train.py
    "lr_gamma": 0.1,  # unused without milestones
    "crop": 256,  # output_size: 256 (random crop, mirrored)
    "batch": 32,  # batchsize: 32
    "epochs": 2500,  # pretrain_epochs 500 supervised epochs, each over the list repeated data_augment=5 times
}


@dataclass(frozen=True)
class MOSSConfig:
    """None means the variant's official value (resolved on construction, see ``_DEFAULTS``)."""

    variant: str = "cvpr2021"
    ngf: int | None = None  # head width (16 | 32)
    num_layers: int | None = None  # residual blocks per stage (cvpr2021: 4) | memory residual layers (stochastic: 20)
    kdim: int | None = None  # memory items per memory (512)
    moving_average_rate: float | None = None  # item update rate (0.999)
    num_blocks: int | None = None  # cvpr2021: encoder (and decoder) stages (5)
    num_scales: int | None = None  # cvpr2021: stages that pool / upsample (3)
    delta: int | None = None  # cvpr2021: channels added per encoder stage (16)
    max_t: float | None = None  # stochastic: initial Gumbel temperature (1.0)
    min_t: float | None = None  # stochastic: final (and eval) temperature (0.03)
    decay_alpha: float | None = None  # stochastic: temperature factor per training forward (0.99998)
    odd_size: str = "pad"  # sizes the generator cannot take: "pad" (reflect, crop) or "resize" (official test_real)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="MOSSConfig.")
        if self.variant not in VARIANTS:
            raise ConfigError(f"MOSSConfig.variant={self.variant!r}; expected one of {list(VARIANTS)}")
        if self.odd_size not in ODD_SIZE:
            raise ConfigError(f"MOSSConfig.odd_size={self.odd_size!r}; expected one of {list(ODD_SIZE)}")
        own = _DEFAULTS[self.variant]
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name in ("variant", "odd_size"):
                continue
            if name in own:
                object.__setattr__(self, name, own[name] if value is None else value)
            elif value is not None:
                other = next(v for v in VARIANTS if name in _DEFAULTS[v])
                raise ConfigError(f"MOSSConfig.{name} applies to variant {other!r} only, not {self.variant!r}")
        self._validate()

    def _validate(self) -> None:
        if min(self.ngf, self.num_layers, self.kdim) < 1 or not 0.0 <= self.moving_average_rate <= 1.0:
            raise ConfigError(f"invalid MOSS config {self}: ngf, num_layers, kdim >= 1, moving_average_rate in [0, 1]")
        if self.variant == "cvpr2021" and not (self.num_blocks >= 1 and 0 <= self.num_scales <= self.num_blocks
                                                and self.delta >= 0):
            raise ConfigError(f"invalid MOSS config {self}: num_blocks >= 1, 0 <= num_scales <= num_blocks, delta >= 0")
        if self.variant == "stochastic" and not (0 < self.min_t <= self.max_t and 0 < self.decay_alpha <= 1):
            raise ConfigError(f"invalid MOSS config {self}: 0 < min_t <= max_t and 0 < decay_alpha <= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MOSSConfig":
        """Strict: unknown keys raise ConfigError. ``preset`` (official|small|stochastic-small) fills keys not given."""
        return strict_from_dict(cls, d, "MOSS config", sort_valid=True, presets=PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def multiple(self) -> int:
        """H and W must be multiples of this for the generator itself."""
        return 2 ** self.num_scales if self.variant == "cvpr2021" else 4


class ResBlock(nn.Module):
    """Official _Residual_Block / _Encoder_layer: conv3x3-LeakyReLU(0.02)-conv3x3 (no biases) + identity."""

    def __init__(self, cin: int, cout: int, down: bool = False, up: bool = False) -> None:
        super().__init__()
        mid = max(cin, cout)  # wide_width (the official make_layer passes a truthy norm_layer there)
        self.down, self.up = down, up
        self.conv1, self.conv2 = nn.Conv2d(cin, mid, 3, 1, 1, bias=False), nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.translation = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        out = self.conv2(F.leaky_relu(self.conv1(x), 0.02))
        out = out + (x if self.translation is None else self.translation(x))
        return F.avg_pool2d(out, 2) if self.down else out


def _stage(blocks: int, cin: int, cout: int, down: bool = False, up: bool = False) -> nn.Sequential:
    return nn.Sequential(ResBlock(cin, cout, down, up), *[ResBlock(cout, cout) for _ in range(blocks - 1)])


class Memory(nn.Module):
    """The official _Memory_Block: items updated by moving average, read softly (or by hard Gumbel-softmax)."""

    def __init__(self, channels: int, items: int, rate: float, gumbel: tuple[float, float, float] | None = None,
                 update_in_eval: bool = False) -> None:
        super().__init__()
        self.units = nn.Parameter(torch.randn(items, channels), requires_grad=False)  # nn.Embedding's N(0, 1)
        self.rate, self.gumbel, self.update_in_eval = rate, gumbel, update_in_eval
        if gumbel is not None:
            self.register_buffer("cur_t", torch.tensor(float(gumbel[0])))

    @torch.no_grad()
    def _updated(self, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(score.argmax(1), self.units.shape[0]).to(x.dtype)  # (n, k)
        mean = (x.t() @ onehot) / (onehot.sum(0) + 1e-6)  # (c, k)
        new = self.units * self.rate + mean.t() * (1 - self.rate)
        if self.training:
            self.units.copy_(new)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)
        xn = F.normalize(flat, dim=1)
        m = self.units
        if self.training or self.update_in_eval:
            m = self._updated(flat.detach(), xn.detach() @ F.normalize(m, dim=1).t())
        score = xn @ F.normalize(m, dim=1).t()
        if self.gumbel is None:
            weights = F.softmax(score, dim=1)
        else:
            max_t, min_t, decay = self.gumbel
            t = float(self.cur_t) if self.training and float(self.cur_t) > min_t else min_t
            weights = F.gumbel_softmax(score, tau=t, hard=True)
            if self.training:
                self.cur_t.mul_(decay)
        return (weights @ m).view(b, h, w, c).permute(0, 3, 1, 2)


class FuseBlock(nn.Module):
    """Official _Fuse_Block (cvpr2021): gated mix of decoder-modulated and self-modulated normalised skips."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c, affine=False)
        self.alpha = nn.Conv2d(c, 1, 1, bias=False)
        self.gamma, self.beta = nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 1, bias=False)
        self.affine_gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.affine_beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.norm(skip)
        out0 = skip * (self.gamma(x) + 1) + self.beta(x)
        out1 = skip * (self.affine_gamma + 1) + self.affine_beta
        alpha = torch.sigmoid(self.alpha(skip))
        if self.training:  # the official drop: 20 % of the samples use the decoder-modulated skip alone
            alpha = alpha * (torch.rand(skip.shape[0], 1, 1, 1, device=skip.device) > 0.2).to(alpha.dtype)
        return (1 - alpha) * out0 + alpha * out1


class Generator2021(nn.Module):
    """The released (CVPR 2021) MOSS generator, on [-1, 1] images of sides divisible by 2**num_scales."""

    def __init__(self, cfg: MOSSConfig) -> None:
        super().__init__()
        n, d = cfg.num_blocks, cfg.delta
        self.head = nn.Conv2d(3, cfg.ngf, 3, 1, 1, bias=False)
        widths = [cfg.ngf + i * d for i in range(n + 1)]
        self.enc = nn.ModuleList(_stage(cfg.num_layers, widths[i], widths[i + 1], down=i < cfg.num_scales)
                                 for i in range(n))
        self.memory = Memory(widths[-1], cfg.kdim, cfg.moving_average_rate, update_in_eval=True)
        self.dec = nn.ModuleList(_stage(cfg.num_layers, widths[n - i], widths[n - i - 1], up=i > n - cfg.num_scales - 1)
                                 for i in range(n))
        self.fuse = nn.ModuleList(FuseBlock(widths[n - i - 1]) for i in range(n - 1))
        self.tail = nn.Conv2d(cfg.ngf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        head, skips = x, []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
        x = self.dec[0](self.memory(x))
        for i, fuse in enumerate(self.fuse):
            x = self.dec[i + 1](fuse(x, skips[-i - 2]))
        return torch.tanh(self.tail(head - x))


class MemResLayer(nn.Module):
    """Official _Mem_Res_layer (stochastic): x + conv(LeakyReLU(conv(x + α·memory(x)))), α init 0."""

    def __init__(self, c: int, cfg: MOSSConfig) -> None:
        super().__init__()
        self.mem = Memory(c, cfg.kdim, cfg.moving_average_rate, gumbel=(cfg.max_t, cfg.min_t, cfg.decay_alpha))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x + self.mem(x) * self.alpha), 0.02))


class GeneratorStochastic(nn.Module):
    """The 2023 training code's generator (train/networks.py NetG), on [-1, 1] images of sides divisible by 4."""

    def __init__(self, cfg: MOSSConfig) -> None:
        super().__init__()
        g = cfg.ngf
        act = nn.LeakyReLU(0.02)
        self.head = nn.Sequential(nn.Conv2d(3, g, 5, 1, 2, bias=False), act, nn.AvgPool2d(2),
                                  nn.Conv2d(g, 2 * g, 5, 1, 2, bias=False), act, nn.AvgPool2d(2))
        self.body = nn.Sequential(*[MemResLayer(2 * g, cfg) for _ in range(cfg.num_layers)])
        self.tail = nn.Sequential(nn.Conv2d(2 * g, 4 * g, 5, 1, 2, bias=False), act, nn.PixelShuffle(2),
                                  nn.Conv2d(g, 4 * g, 5, 1, 2, bias=False), act, nn.PixelShuffle(2),
                                  nn.Conv2d(g, 3, 5, 1, 2, bias=False), nn.Tanh())
        for m in self.modules():  # MemoryAE._init_weights: trunc_normal_(std=.02) on conv weights
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(x - self.body(x))


class MOSS(nn.Module):
    """MOSS generator: ``forward(rgb)`` takes and returns b×3×H×W RGB in [0, 1] (see the module docstring)."""

    def __init__(self, config: MOSSConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MOSSConfig()
        self.net = Generator2021(cfg) if cfg.variant == "cvpr2021" else GeneratorStochastic(cfg)

    def min_input_side(self) -> int:
        return self.config.multiple()

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"MOSS expects b×3×H×W RGB input, got {tuple(rgb.shape)}")
        h, w = rgb.shape[-2:]
        k = self.config.multiple()
        hh, ww = -(-h // k) * k, -(-w // k) * k
        x = rgb * 2.0 - 1.0
        if (hh, ww) == (h, w):
            return self.net(x) * 0.5 + 0.5
        if self.config.odd_size == "resize":  # official test_real: bicubic to the next multiple, and back
            y = self.net(F.interpolate(x, (hh, ww), mode="bicubic", align_corners=False))
            return F.interpolate(y, (h, w), mode="bicubic", align_corners=False) * 0.5 + 0.5
        mode = "reflect" if hh - h < h and ww - w < w else "replicate"
        y = self.net(F.pad(x, (0, ww - w, 0, hh - h), mode=mode))
        return y[..., :h, :w] * 0.5 + 0.5


def load_moss_weights(model: MOSS, path: str | Path) -> MOSS:
    """Load kit weights (``.safetensors`` export or kit checkpoint) strictly; CheckpointError names the file."""
    return load_weights_file(model, path, "MOSS")


__all__ = ["MOSS", "MOSSConfig", "PRESETS", "RECIPE", "VARIANTS", "load_moss_weights"]
