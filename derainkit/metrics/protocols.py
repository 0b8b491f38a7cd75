"""PSNR/SSIM under named protocols, because "PSNR" alone is not a number you can compare.

Deraining papers report figures that differ by 1–1.5 dB for the same images depending on the
colour space, rounding and SSIM window handling. Every score the kit writes names its protocol:

``matlab-y``   The deraining standard (Restormer's ``evaluate_PSNR_SSIM.m``, PReNet's
               ``statistic/*.m``): the prediction is quantised to uint8 (``quantize``), BT.601 luma
               is computed from uint8 RGB and *rounded to uint8* as MATLAB's ``rgb2ycbcr`` does,
               PSNR = 10·log10(255²/MSE) on that Y with no border crop, SSIM is Wang's
               ``ssim_index``: 11×11 Gaussian window (σ 1.5), K = (0.01, 0.03), L = 255, over the
               'valid' region, no downsampling.
``y-float``    BasicSR/mmagic style: the prediction is rounded to uint8 (``tensor2img``), then Y is
               computed in float *without* rounding; PSNR and valid-window Gaussian SSIM on it.
``msgnn-rgb``  What the official MSGNN evaluation computes (``eval.py``/``cal_ssim.py``): RGB
               floats, PSNR from the MSE over all three channels of the prediction clipped to
               [0, 1] (no rounding, no crop); SSIM with an 11×11 Gaussian window (σ 1.5) applied
               with *zero padding* ('same' output, borders included), C1 = 0.01², C2 = 0.03², on
               the *unclipped* prediction, averaged over pixels and channels.

All functions take H×W×3 RGB float arrays in [0, 1] (the prediction may leave that range; each
protocol says how it handles that). Per-image scores are averaged over a dataset by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

Quantize = Literal["round", "trunc"]

# BT.601 "studio swing" luma coefficients as in MATLAB's rgb2ycbcr, for RGB in [0, 255].
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def quantize_uint8(pixels: np.ndarray, mode: Quantize = "round") -> np.ndarray:
    """[0,1] floats -> uint8 after clipping. ``trunc`` mimics ``np.uint8(255*x)`` in official test scripts."""
    x = np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0) * 255.0
    if mode == "round":
        # round half up (x >= 0), like MATLAB's im2uint8, rather than numpy's half-to-even
        return np.floor(x + 0.5).astype(np.uint8)
    if mode == "trunc":
        return np.floor(x).astype(np.uint8)
    raise ValueError(f"quantize must be 'round' or 'trunc', got {mode!r}")


def rgb_to_y(rgb_uint8: np.ndarray, round_like_matlab: bool = True) -> np.ndarray:
    """BT.601 luma of a uint8 RGB image on the [16, 235] scale, as float64.

    With ``round_like_matlab`` the value is rounded half away from zero to an integer, which is
    what ``rgb2ycbcr`` returns for uint8 input; without it the float value is kept (BasicSR).
    """
    if rgb_uint8.dtype != np.uint8:
        raise TypeError(f"rgb_to_y expects uint8 RGB, got {rgb_uint8.dtype}")
    y = 16.0 + rgb_uint8.astype(np.float64) @ _Y_COEFFS
    return np.floor(y + 0.5) if round_like_matlab else y


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """PSNR in dB of two arrays of the same shape; +inf when they are identical."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim_wang_valid(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al.'s SSIM (Gaussian 11×11, σ 1.5, population covariance, 'valid' region) of 2-D arrays.

    scikit-image with these settings reproduces MATLAB's ``ssim_index`` to 6 decimals.
    """
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11×11 pixels, got {a.shape[0]}×{a.shape[1]}")
    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=data_range))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_zero_padded(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
                     c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """Mean SSIM of b×c×H×W tensors with a zero-padded ('same') Gaussian window, per channel.

    This is the SSIM of the official MSGNN code (the "pytorch-ssim" formulation) for data in
    [0, 1]; it is differentiable and also serves as the −SSIM training loss. Returns a scalar
    tensor averaged over batch, channels and pixels.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two b×c×H×W tensors of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    b, c, h, w_ = pred.shape
    # The 2-D window is the outer product of a 1-D Gaussian and zero padding is separable, so two 1-D
    # passes over all five maps at once (as single-channel images) give the same 'same'-size blur as
    # the official depthwise 11×11 conv, several times faster on CPU.
    g = _gaussian_window(window_size, sigma).sum(dim=1).to(dtype=pred.dtype, device=pred.device)
    pad = window_size // 2
    maps = torch.stack([pred, target, pred * pred, target * target, pred * target]).reshape(5 * b * c, 1, h, w_)
    blurred = F.conv2d(F.conv2d(maps, g.view(1, 1, -1, 1), padding=(pad, 0)), g.view(1, 1, 1, -1), padding=(0, pad))
    mu1, mu2, e11, e22, e12 = blurred.reshape(5, b, c, h, w_).unbind(0)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = e11 - mu1_sq
    s2 = e22 - mu2_sq
    s12 = e12 - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return ssim_map.mean()


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


def _check(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"expected H×W×3 RGB arrays, got {pred.shape}")


def score_matlab_y(pred: np.ndarray, gt: np.ndarray, quantize: Quantize = "round") -> Score:
    _check(pred, gt)
    y_pred = rgb_to_y(quantize_uint8(pred, quantize), round_like_matlab=True)
    y_gt = rgb_to_y(quantize_uint8(gt, "round"), round_like_matlab=True)
    return Score(psnr(y_pred, y_gt, 255.0), ssim_wang_valid(y_pred, y_gt, 255.0))


def score_y_float(pred: np.ndarray, gt: np.ndarray, quantize: Quantize = "round") -> Score:
    _check(pred, gt)
    y_pred = rgb_to_y(quantize_uint8(pred, quantize), round_like_matlab=False)
    y_gt = rgb_to_y(quantize_uint8(gt, "round"), round_like_matlab=False)
    return Score(psnr(y_pred, y_gt, 255.0), ssim_wang_valid(y_pred, y_gt, 255.0))


def score_msgnn_rgb(pred: np.ndarray, gt: np.ndarray, quantize: Quantize | None = None) -> Score:
    """MSGNN's protocol works on floats; ``quantize`` (if given) is applied first, for scoring saved images."""
    _check(pred, gt)
    pred = np.asarray(pred, np.float64)
    if quantize is not None:
        pred = quantize_uint8(pred, quantize) / 255.0
    gt = np.asarray(gt, np.float64)
    p = psnr(np.clip(pred, 0.0, 1.0), gt, 1.0)
    to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]  # noqa: E731
    s = ssim_zero_padded(to_t(pred), to_t(gt)).item()
    return Score(p, float(s))


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    score: Callable[..., Score]
    quantizes: bool  # whether the prediction is turned into uint8 before scoring


PROTOCOLS: dict[str, Protocol] = {
    "matlab-y": Protocol("matlab-y", "uint8 RGB -> MATLAB-rounded BT.601 Y; PSNR; Wang SSIM (Gaussian 11/1.5, valid)",
                         score_matlab_y, True),
    "y-float": Protocol("y-float", "uint8 RGB -> unrounded BT.601 Y (BasicSR/mmagic); PSNR; Gaussian SSIM (valid)",
                        score_y_float, True),
    "msgnn-rgb": Protocol("msgnn-rgb", "RGB floats (MSGNN eval.py): PSNR on clipped output; zero-padded Gaussian SSIM",
                          score_msgnn_rgb, False),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown metric protocol {name!r}; choose from {', '.join(PROTOCOLS)}") from None


def score(pred: np.ndarray, gt: np.ndarray, protocol: str, quantize: Quantize = "round") -> Score:
    """Score one prediction against its ground truth under a named protocol.

    ``quantize`` is how a float prediction becomes uint8 for the protocols that need it
    ("round", the kit's default when it writes PNGs, or "trunc", what PReNet's official test
    script does). ``msgnn-rgb`` scores floats and ignores it.
    """
    proto = get_protocol(protocol)
    if proto.quantizes:
        return proto.score(pred, gt, quantize=quantize)
    return proto.score(pred, gt)
