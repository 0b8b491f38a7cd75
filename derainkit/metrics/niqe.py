"""NIQE, the no-reference "naturalness" score deraining papers report on real rain (lower is better).

Mittal, Soundararajan and Bovik, "Making a completely blind image quality analyzer", IEEE Signal
Processing Letters 20(3), 2013. The score is the distance between a multivariate Gaussian fitted to
natural-scene-statistics features of the image's 96×96 blocks and one fitted, once, to pristine
photos. Those pristine parameters ship with the kit (``data/niqe_pris_params.npz``, the LIVE
release's numbers; notice in ``data/NIQE_LICENSE.txt``).

What is the paper's, what is the LIVE MATLAB release's, what is ours:

- Paper: MSCN coefficients, 18 AGGD features per block at two scales, the pristine MVG and the
  distance formula ``sqrt(dᵀ ((Σ_p + Σ_d)/2)⁻¹ d)``.
- LIVE release (``computequality.m``), which every number here follows because the published
  MATLAB scores come from it: 7×7 Gaussian window (σ = 7/6) with replicate edges, MSCN constant 1
  (pixels on the 0–255 scale), non-overlapping 96×96 blocks (48×48 at the second scale) after
  cropping to whole blocks, α by moment matching on the grid 0.2:0.001:10 (first minimum), products
  with circular shifts (0,1), (1,0), (1,1), (1,−1), the second scale by ``imresize(I, 0.5)`` (bicubic
  with antialiasing, symmetric edges, no rounding), no sharpness selection when scoring (the
  release applies its 0.75 sharpness threshold only when fitting the pristine model), NaN-aware
  mean and covariance (``nanmean``, ``nancov`` with N−1) and a pseudo-inverse.
- Ours: the arithmetic is vectorised (all blocks and all five fits at once; α found by a binary
  search on the monotone moment-ratio curve, which picks the same grid point as the release's
  exhaustive minimum) and MATLAB's ``imresize`` is re-implemented here. In perfectly flat 7×7
  windows the MSCN is exactly 0 mathematically but floating-point noise (below 1e-13 on 0–255 data)
  in any real implementation; its sign depends on summation order, which MATLAB's ``imfilter``
  (separable, IPP) does not let one match, and it decides whether the AGGD fit counts those pixels.
  ``flat_eps`` (default 1e-11; genuine coefficients on the reference images are above 1e-9) sets
  such values to exactly 0, which makes the score independent of the arithmetic and lands closest
  to MATLAB on the reference images with flat areas (I19: +0.03 instead of +0.27); ``flat_eps=0``
  keeps the raw noise.

Input conversion (``to_gray``): uint8 RGB goes through MATLAB ``rgb2gray`` (weights 0.298936021293775,
0.587043074451121, 0.114020904255103, rounded to integers, as MATLAB returns uint8); float RGB in
[0, 1] is first quantised to uint8 (clipped, rounded half up, as the kit writes images), so an image
and its ``/255`` float version score the same; a grey H×W array is used as is when uint8, and as
``round(255·x)`` when float in [0, 1]. ``colour="y-double"`` uses instead the unrounded BT.601 luma
``16 + (65.481 R + 128.553 G + 24.966 B)/255``, the input of an earlier MATLAB run of the same release.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from scipy import ndimage
from scipy.special import gamma as _gamma

from derainkit.errors import ConfigError, DatasetError, ImageReadError, InputSizeError, naming_file

Colour = Literal["rgb2gray", "y-double"]

BLOCK = 96  # block side at the first scale (the release's blocksizerow/blocksizecol)
MIN_SIDE = BLOCK  # one whole block at scale 1 (and so a 48-px block at scale 2)
_N_FEATURES = 18  # per scale
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
_Y_COEFFS = np.array([65.481, 128.553, 24.966]) / 255.0
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_DATA = Path(__file__).with_name("data")


# --------------------------------------------------------------------------- input conversion
def to_gray(image: np.ndarray, colour: Colour = "rgb2gray") -> np.ndarray:
    """The float64 grey image (0–255 scale) NIQE scores, from RGB or grey, uint8 or float in [0, 1]."""
    if colour not in ("rgb2gray", "y-double"):
        raise ConfigError(f"NIQE colour must be 'rgb2gray' or 'y-double', got {colour!r}")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageReadError(f"NIQE expects an H×W×3 RGB or H×W grey image, got an array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        u8 = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageReadError("NIQE input contains NaN or infinite values; pass a finite image in [0, 1]")
        if arr.size and arr.max() > 2.0:  # a little overshoot is a model's output; more is 0-255 data
            raise ImageReadError(f"NIQE float input must be in [0, 1], got values up to {arr.max():.4g}; "
                                 "divide 0-255 data by 255 or pass uint8")
        # round half up, like MATLAB's im2uint8 and the kit's image writer
        u8 = np.floor(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ImageReadError(f"NIQE expects uint8 or float pixels in [0, 1], got dtype {arr.dtype}")
    if u8.ndim == 2:
        return u8.astype(np.float64)
    r, g, b = (u8[:, :, c].astype(np.float64) for c in range(3))
    if colour == "rgb2gray":
        # MATLAB rgb2gray on uint8 returns uint8: rounded (half away from zero, here all values are >= 0)
        return np.floor(_RGB2GRAY[0] * r + _RGB2GRAY[1] * g + _RGB2GRAY[2] * b + 0.5)
    return 16.0 + (_Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b)


# --------------------------------------------------------------------------- MATLAB imresize
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB imresize's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=32)
def _resize_taps(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (out_len × taps) of MATLAB's bicubic resize along one axis.

    Downscaling widens the kernel by 1/scale (antialiasing); edges mirror symmetrically (the edge
    sample repeated); weights are normalised per output sample; all-zero tap columns are dropped.
    """
    out_len = math.ceil(in_len * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64)
    x = u / scale + 0.5 * (1.0 - 1.0 / scale)  # output sample centre in input coordinates (1-based)
    left = np.floor(x - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = x[:, None] - idx
    weights = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return idx[:, keep], weights[:, keep]


def imresize_matlab(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiased when shrinking) of a 2-D float array.

    Rows are resized first, then columns, as MATLAB does for equal scales; each output sample is the
    weighted sum of its taps in tap order. No rounding (float in, float out).
    """
    out = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        idx, w = _resize_taps(out.shape[axis], float(scale))
        src = np.moveaxis(out, axis, 0)
        acc = w[:, 0, None] * src[idx[:, 0]]
        for k in range(1, idx.shape[1]):  # a loop over the ≤ 10 taps, not over pixels
            acc += w[:, k, None] * src[idx[:, k]]
        out = np.moveaxis(acc, 0, axis)
    return out


# --------------------------------------------------------------------------- features
@lru_cache(maxsize=1)
def gaussian_window() -> np.ndarray:
    """The release's 7×7 Gaussian window (σ = 7/6), normalised to sum 1 (by ``fspecial``, then again)."""
    r = np.arange(-3, 4, dtype=np.float64)
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * (7.0 / 6.0) ** 2))
    w /= w.sum()
    return w / w.sum()


def _blur(a: np.ndarray) -> np.ndarray:
    """The Gaussian window applied with replicate edges, separably: the window is rank one, and
    MATLAB's ``imfilter`` too filters it as two 1-D passes."""
    g1 = gaussian_window().sum(axis=1)  # the window is the outer product of this with itself
    return ndimage.correlate1d(ndimage.correlate1d(a, g1, axis=0, mode="nearest"), g1, axis=1, mode="nearest")


def mscn(gray: np.ndarray, flat_eps: float = 1e-11) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (I − μ)/(σ + 1) of a 0–255 grey image.

    μ and σ are local, from the 7×7 Gaussian window, σ = sqrt(|E[I²] − μ²|). |MSCN| < ``flat_eps``
    is set to 0 (see the module docstring).
    """
    mu = _blur(gray)
    sigma = np.sqrt(np.abs(_blur(gray * gray) - mu * mu))
    coeffs = (gray - mu) / (sigma + 1.0)
    if flat_eps > 0:
        coeffs[np.abs(coeffs) < flat_eps] = 0.0
    return coeffs


def _blocks(x: np.ndarray, b: int) -> np.ndarray:
    """Non-overlapping b×b blocks of a 2-D array whose sides are multiples of b, as (N, b, b)."""
    nr, nc = x.shape[0] // b, x.shape[1] // b
    return x.reshape(nr, b, nc, b).transpose(0, 2, 1, 3).reshape(nr * nc, b, b)


@lru_cache(maxsize=1)
def _alpha_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The release's α grid 0.2:0.001:10 with r(α) = Γ(2/α)²/(Γ(1/α)Γ(3/α)) and two gamma ratios."""
    alpha = (200.0 + np.arange(9801)) / 1000.0
    g1, g2, g3 = _gamma(1.0 / alpha), _gamma(2.0 / alpha), _gamma(3.0 / alpha)
    r = (g2 * g2) / (g1 * g3)
    # the binary search below relies on this; it holds for the generalised Gaussian's moment ratio
    if not np.all(np.diff(r) > 0):
        raise AssertionError("NIQE: the AGGD moment-ratio grid is not strictly increasing")
    return alpha, r, np.sqrt(g1 / g3), g2 / g1


def _nearest_on_grid(target: np.ndarray) -> np.ndarray:
    """Index of argmin_k (r_k − target)² on the α grid, the first one on ties; 0 for NaN targets
    (MATLAB's ``min`` over an all-NaN vector returns the first index)."""
    _, r, _, _ = _alpha_grid()
    t = np.where(np.isnan(target), r[0], target)
    hi = np.clip(np.searchsorted(r, t), 1, len(r) - 1)
    lo = hi - 1
    choose_hi = (r[hi] - t) ** 2 < (r[lo] - t) ** 2
    return np.where(np.isnan(target), 0, np.where(choose_hi, hi, lo))


def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, NaN where den is 0 (MATLAB's mean of an empty selection)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def aggd_fit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit (α, β_left, β_right) of each row of ``v`` (N × n) by
    moment matching, as the release's ``estimateaggdparam``."""
    k, bl, br = _aggd_fit(v)
    return _alpha_grid()[0][k], bl, br


def _aggd_fit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``aggd_fit`` with α given as its index on the grid."""
    _, _, beta_factor, _ = _alpha_grid()
    # few passes over the data and no squared temporaries: this is where NIQE spends its time
    left, right = np.minimum(v, 0.0), np.maximum(v, 0.0)
    left_sq, right_sq = np.einsum("ij,ij->i", left, left), np.einsum("ij,ij->i", right, right)
    left_std = np.sqrt(_nan_div(left_sq, np.count_nonzero(left, axis=1)))
    right_std = np.sqrt(_nan_div(right_sq, np.count_nonzero(right, axis=1)))
    n = v.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = left_std / right_std
        mean_abs = (right.sum(axis=1) - left.sum(axis=1)) / n
        r_hat = mean_abs * mean_abs / ((left_sq + right_sq) / n)
        r_norm = (r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1)) / ((gamma_hat ** 2 + 1) ** 2)
    k = _nearest_on_grid(r_norm)
    return k, left_std * beta_factor[k], right_std * beta_factor[k]


def block_features(coeffs: np.ndarray, b: int) -> np.ndarray:
    """The release's 18 features of every b×b block of an MSCN map, as (N, 18).

    Per block: the AGGD fit of the MSCN (α, mean of the two β), then for its products with each of
    the four circular shifts: α, the AGGD mean (β_r − β_l)·Γ(2/α)/Γ(1/α), β_l, β_r.
    """
    blocks = _blocks(coeffs, b)
    n_blocks = blocks.shape[0]
    flat = blocks.reshape(n_blocks, -1)
    feats = np.empty((n_blocks, _N_FEATURES))
    alpha_grid, _, _, mean_factor = _alpha_grid()
    k, bl, br = _aggd_fit(flat)
    feats[:, 0], feats[:, 1] = alpha_grid[k], (bl + br) / 2.0
    for i, shift in enumerate(_SHIFTS):  # the four neighbour directions
        prod = flat * np.roll(blocks, shift, axis=(1, 2)).reshape(n_blocks, -1)
        k, bl, br = _aggd_fit(prod)
        feats[:, 2 + 4 * i: 6 + 4 * i] = np.stack([alpha_grid[k], (br - bl) * mean_factor[k], bl, br], axis=1)
    return feats


def niqe_features(gray: np.ndarray, flat_eps: float = 1e-11) -> np.ndarray:
    """The (N blocks × 36) feature matrix of a grey float image (0–255 scale): 18 per scale."""
    h, w = gray.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputSizeError(f"NIQE needs an image of at least {MIN_SIDE}×{MIN_SIDE} px (one 96-px block, "
                             f"48 px at the second scale), got {w}×{h}")
    img = gray[: h // BLOCK * BLOCK, : w // BLOCK * BLOCK].astype(np.float64)
    per_scale = []
    for scale in (1, 2):
        coeffs = mscn(img, flat_eps)
        per_scale.append(block_features(coeffs, BLOCK // scale))
        if scale == 1:
            img = imresize_matlab(img, 0.5)
    return np.concatenate(per_scale, axis=1)


# --------------------------------------------------------------------------- the score
@lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray]:
    """(μ_p of shape (36,), Σ_p of shape (36, 36)): the LIVE release's pristine model."""
    with np.load(_DATA / "niqe_pris_params.npz") as data:
        return data["mu_pris_param"].reshape(-1).astype(np.float64), data["cov_pris_param"].astype(np.float64)


def _pinv(a: np.ndarray) -> np.ndarray:
    """Moore–Penrose pseudo-inverse with MATLAB's default tolerance max(size)·eps(‖A‖₂)."""
    u, s, vt = np.linalg.svd(a)
    keep = s > max(a.shape) * np.spacing(s[0])
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def mvg_distance(features: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray) -> float:
    """sqrt(dᵀ pinv((Σ_p + Σ_d)/2) d) with d = μ_p − μ_d; NaN-aware like MATLAB ``nanmean``/``nancov``.

    μ_d ignores NaN per feature; Σ_d uses the blocks without any NaN, normalised by N − 1 (by N when
    there is one block, as MATLAB does). NaN when no block has a complete feature vector.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" for an all-NaN feature
        mu_d = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] == 0 or np.isnan(mu_d).any():
        return float("nan")
    centred = complete - complete.mean(axis=0)
    cov_d = centred.T @ centred / max(complete.shape[0] - 1, 1)
    d = mu_p - mu_d
    q = d @ _pinv((cov_p + cov_d) / 2.0) @ d
    return float(np.sqrt(max(q, 0.0)))


def niqe(image: np.ndarray, colour: Colour = "rgb2gray", flat_eps: float = 1e-11) -> float:
    """NIQE of one image (lower is more natural), as the LIVE MATLAB release computes it.

    ``image``: H×W×3 RGB or H×W grey, uint8 or float in [0, 1] (converted as ``to_gray`` says), at
    least 96×96 px (InputSizeError otherwise); the image is cropped to whole 96-px blocks. ``colour``
    only applies to RGB input. Returns NaN for an image with no texture at all (e.g. constant), where
    every block's fit is undefined. NaN/inf, wrong shapes or dtypes raise ImageReadError.
    """
    mu_p, cov_p = pristine_params()
    return mvg_distance(niqe_features(to_gray(image, colour), flat_eps), mu_p, cov_p)


def niqe_folder(paths: Iterable[str | Path] | str | Path, colour: Colour = "rgb2gray",
                flat_eps: float = 1e-11) -> dict[str, float]:
    """NIQE of every image file in ``paths`` (a folder, or an iterable of files), keyed by file path.

    Unpaired: no ground truth is needed. Errors (unreadable file, image too small) name the file.
    """
    from derainkit.io import is_image_file, read_image

    if isinstance(paths, (str, Path)):
        root = Path(paths)
        files: Sequence[Path] = sorted(p for p in root.iterdir() if is_image_file(p)) if root.is_dir() else [root]
        if not files:
            raise DatasetError(f"{root}: no image files to score with NIQE")
    else:
        files = [Path(p) for p in paths]
    return {str(f): naming_file(f, lambda f=f: niqe(read_image(f), colour, flat_eps)) for f in files}
