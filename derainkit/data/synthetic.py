"""Synthetic rain: additive streaks (and optional haze) on clean images, seeded and reproducible.

Model. Streaks are motion-blurred drops, as in the Photoshop-style recipe behind Rain100L/H and
Rain1400: sparse random drops of random brightness are smeared along the fall direction by a line
kernel of the streak's length, width and angle. Drops are split into a few groups ("layers"), each
with its own jittered angle and length, so streaks are not all parallel clones. The rain layer R is
gray (rain adds light equally to R, G and B, as in Rain100L, whose rainy-minus-clean difference is
the same in all three channels) and clipped to [0, 1]. Composite:

    O = clip(B + R)                              without haze
    O = clip(B·t + A·(1 − t) + R)                with haze (A: atmospheric light, t: transmission)

t falls linearly from ``1 − haze/2`` at the bottom of the image to ``1 − haze`` at the top, a
crude depth cue (far things sit higher in most photos).

Angles are in degrees from the vertical; a positive angle leans the streaks like a backslash
("\\"), i.e. the drops fall down and to the right.

Reproducibility. The same (image, params, seed) gives the same bytes on every machine: random
numbers come from numpy's PCG64 (`rng.random`, `rng.integers`, whose streams do not depend on the
platform), the kernel has integer weights and drops integer brightness, so the blur is an exact
integer sum (no order-dependent float rounding, no FFT), and everything after it is elementwise
float arithmetic (add, multiply, divide: correctly rounded everywhere).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from derainkit.errors import ConfigError, DatasetError
from derainkit.io import read_image, write_image

PathLike = Union[str, os.PathLike]
SeedLike = Union[int, Sequence[int], np.random.SeedSequence, np.random.Generator, None]

_KERNEL_LEVELS = 16  # integer kernel weights 0..16: enough anti-aliasing, exact integer blur
_DROP_LEVELS = 255  # integer drop brightness 0..255


@dataclass(frozen=True)
class RainParams:
    """Parameters of the streak rain model (see the module docstring).

    density:           fraction of pixels that seed a drop (before the blur spreads it into a streak)
    length:            mean streak length in pixels
    length_jitter:     relative spread of the length between layers (0.3: ±30 %)
    angle:             mean streak angle, degrees from vertical, positive leans "\\"
    angle_jitter:      spread of the angle between layers, degrees (uniform in ±jitter)
    width:             streak thickness in pixels
    intensity:         brightness a full-strength drop adds (before clipping)
    brightness_min:    weakest drop, as a fraction of the strongest (drops are uniform in [min, 1])
    layers:            number of drop groups with their own angle and length
    haze:              0 for none; otherwise 1 − t at the top of the image (0.3: a visible veil)
    atmospheric_light: A, the gray level of the veil
    """

    density: float = 0.02
    length: float = 20.0
    length_jitter: float = 0.3
    angle: float = 0.0
    angle_jitter: float = 5.0
    width: float = 1.0
    intensity: float = 0.6
    brightness_min: float = 0.3
    layers: int = 3
    haze: float = 0.0
    atmospheric_light: float = 0.85

    def __post_init__(self) -> None:
        checks = [
            ("density", 0.0 <= self.density <= 1.0, "in [0, 1]"),
            ("length", 1.0 <= self.length <= 512.0, "in [1, 512] pixels"),
            ("length_jitter", 0.0 <= self.length_jitter < 1.0, "in [0, 1)"),
            ("angle", -90.0 <= self.angle <= 90.0, "in [-90, 90] degrees"),
            ("angle_jitter", 0.0 <= self.angle_jitter <= 90.0, "in [0, 90] degrees"),
            ("width", 0.5 <= self.width <= 16.0, "in [0.5, 16] pixels"),
            ("intensity", 0.0 <= self.intensity <= 4.0, "in [0, 4]"),
            ("brightness_min", 0.0 <= self.brightness_min <= 1.0, "in [0, 1]"),
            ("layers", isinstance(self.layers, int) and 1 <= self.layers <= 16, "an integer in [1, 16]"),
            ("haze", 0.0 <= self.haze < 1.0, "in [0, 1)"),
            ("atmospheric_light", 0.0 <= self.atmospheric_light <= 1.0, "in [0, 1]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"RainParams.{name} = {getattr(self, name)!r}: must be {expected}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "RainParams":
        """A named preset ("light", "heavy"), optionally with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown rain preset {name!r}; expected one of: {', '.join(PRESETS)}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ConfigError(f"unknown RainParams field(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# Calibrated on the Rain100L test clean images (see tests/test_data_synthetic.py for the checks):
# "light" gives an input PSNR of about 26 dB RGB, like Rain100L (25.5 dB); "heavy" about 15 dB, in the
# range of Rain100H, with long, thick, bright streaks and a haze veil.
PRESETS: dict[str, RainParams] = {
    "light": RainParams(density=0.003, length=30.0, length_jitter=0.35, angle=0.0, angle_jitter=6.0, width=1.0,
                        intensity=0.35, brightness_min=0.25, layers=3, haze=0.0),
    "heavy": RainParams(density=0.002, length=40.0, length_jitter=0.3, angle=10.0, angle_jitter=8.0, width=2.5,
                        intensity=0.7, brightness_min=0.35, layers=4, haze=0.3, atmospheric_light=0.85),
}


def _as_params(params: Union[RainParams, str, None]) -> RainParams:
    if params is None:
        return PRESETS["light"]
    if isinstance(params, str):
        return RainParams.preset(params)
    if not isinstance(params, RainParams):
        raise ConfigError(f"params must be a RainParams or a preset name, got {type(params).__name__}")
    return params


def _as_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def streak_kernel(length: float, angle: float, width: float) -> np.ndarray:
    """Integer (0..16) weights of an anti-aliased line segment: one streak's footprint.

    `angle` is in degrees from the vertical, positive leaning "\\". Brightness tapers towards the
    ends (a drop is brightest mid-exposure in the usual rendering), so streaks do not look like bars.
    """
    theta = math.radians(angle)
    dx, dy = math.sin(theta), math.cos(theta)  # unit vector along the streak (y points down)
    half_len, half_w = length / 2.0, width / 2.0
    r = int(math.ceil(half_len + half_w + 1))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    along = xx * dx + yy * dy
    across = np.abs(-xx * dy + yy * dx)
    # across the streak: a tent profile, brightest on the axis and fading over half_w + 0.5 pixels,
    # so wide streaks look like soft blurred drops rather than hard-edged bars
    side = np.clip(1.0 - across / (half_w + 0.5), 0.0, 1.0)
    ends = np.clip(half_len + 0.5 - np.abs(along), 0.0, 1.0)
    taper = 1.0 - 0.6 * np.clip(np.abs(along) / max(half_len, 0.5), 0.0, 1.0) ** 2
    weights = np.round(side * ends * taper * _KERNEL_LEVELS).astype(np.int32)
    if weights.sum() == 0:  # a sub-pixel streak still leaves its centre pixel
        weights[r, r] = _KERNEL_LEVELS
    # trim empty border rows/columns (the square grid is generous for steep angles)
    ys, xs = np.nonzero(weights)
    m = max(abs(ys - r).max(), abs(xs - r).max())
    return weights[r - m:r + m + 1, r - m:r + m + 1]


def _blur_integer(drops: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Exact integer correlation of `drops` (int32) with `kernel` (odd square, int32), zero padding.

    A sum of shifted copies, one per nonzero tap: exact, so independent of summation order, unlike a
    float or FFT convolution. The kernel is point-symmetric, so correlation equals convolution.
    """
    h, w = drops.shape
    m = kernel.shape[0] // 2
    padded = np.zeros((h + 2 * m, w + 2 * m), dtype=np.int32)
    padded[m:m + h, m:m + w] = drops
    out = np.zeros((h, w), dtype=np.int32)
    for i, j in zip(*np.nonzero(kernel)):
        out += int(kernel[i, j]) * padded[i:i + h, j:j + w]
    return out


def rain_layer(height: int, width: int, params: Union[RainParams, str, None] = None,
               seed: SeedLike = None) -> np.ndarray:
    """An H×W float32 rain layer in [0, 1] (gray: the same for R, G and B)."""
    p = _as_params(params)
    rng = _as_rng(seed)
    acc = np.zeros((height, width), dtype=np.int64)
    per_layer = p.density / p.layers
    lo = int(round(p.brightness_min * _DROP_LEVELS))
    for _ in range(p.layers):
        angle = p.angle + p.angle_jitter * (2.0 * rng.random() - 1.0)
        length = max(1.0, p.length * (1.0 + p.length_jitter * (2.0 * rng.random() - 1.0)))
        seeds = rng.random((height, width)) < per_layer
        brightness = rng.integers(max(lo, 1), _DROP_LEVELS + 1, size=(height, width), dtype=np.int32)
        drops = np.where(seeds, brightness, 0).astype(np.int32)
        acc += _blur_integer(drops, streak_kernel(length, angle, p.width))
    scale = p.intensity / float(_DROP_LEVELS * _KERNEL_LEVELS)
    return np.minimum(acc.astype(np.float64) * scale, 1.0).astype(np.float32)


def transmission_map(height: int, width: int, haze: float) -> np.ndarray:
    """H×1 transmission t (broadcasts over columns): 1 − haze at the top, 1 − haze/2 at the bottom."""
    rows = np.arange(height, dtype=np.float64) / max(height - 1, 1)
    return (1.0 - haze * (1.0 - 0.5 * rows))[:, None]


def add_rain(clean: np.ndarray, params: Union[RainParams, str, None] = None, seed: SeedLike = None,
             return_layer: bool = False) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Rainy version of an H×W×3 float image in [0, 1] (returns float32, same shape).

    With `return_layer=True` returns (rainy, rain_layer H×W). Same inputs and seed, same output.
    """
    clean = np.asarray(clean)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {clean.shape}")
    p = _as_params(params)
    h, w = clean.shape[:2]
    rain = rain_layer(h, w, p, seed)
    base = clean.astype(np.float64)
    if p.haze > 0:
        t = transmission_map(h, w, p.haze)[:, :, None]
        base = base * t + p.atmospheric_light * (1.0 - t)
    rainy = np.clip(base + rain[:, :, None].astype(np.float64), 0.0, 1.0).astype(np.float32)
    return (rainy, rain) if return_layer else rainy


def make_paired_dataset(clean_images_or_paths: Iterable[Union[np.ndarray, PathLike]], out_root: PathLike,
                        params: Union[RainParams, str, None] = None, seed: int = 0,
                        layout: str = "rain100", names: Optional[Sequence[str]] = None) -> Path:
    """Write rainy/clean pairs in the JORDER layout (``rain/X.png``, ``norain/X.png``, lossless PNG).

    Items are H×W×3 float arrays in [0, 1] or image paths. File names are `names`, else the source
    file's stem, else ``norain-N`` (1-based, as in Rain100L). Image k uses the seed sequence
    (seed, k), so adding images does not change the rain on the earlier ones. Returns `out_root`.
    """
    if layout != "rain100":
        raise DatasetError(f"make_paired_dataset writes the 'rain100' layout only, got layout={layout!r}")
    p = _as_params(params)
    out_root = Path(out_root)
    items = list(clean_images_or_paths)
    if not items:
        raise DatasetError(f"{out_root}: no clean images given")
    if names is not None and len(names) != len(items):
        raise DatasetError(f"{out_root}: {len(names)} names for {len(items)} images")
    used: set[str] = set()
    for k, item in enumerate(items):
        if isinstance(item, np.ndarray):
            clean = item.astype(np.float32)
            stem = f"norain-{k + 1}"
        else:
            clean = read_image(item)
            stem = Path(item).stem
        if names is not None:
            stem = str(names[k])
        if stem in used:
            raise DatasetError(f"{out_root}: two images would both be written as {stem}.png; pass distinct names")
        used.add(stem)
        rainy = add_rain(clean, p, seed=np.random.SeedSequence([int(seed), k]))
        write_image(out_root / "norain" / f"{stem}.png", clean)
        write_image(out_root / "rain" / f"{stem}.png", rainy)
    return out_root
