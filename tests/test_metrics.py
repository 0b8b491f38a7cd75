"""Metric protocols pinned to independently computed values.

The references here are written separately from derainkit.metrics: BasicSR-style SSIM with
cv2.filter2D and a 'valid' crop (the formula MATLAB's ssim_index computes), a numpy sliding-
window SSIM with explicit zero padding (MSGNN's cal_ssim), and hand-derived MATLAB rgb2ycbcr
values.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from derainkit.metrics import get_protocol, psnr, quantize_uint8, rgb_to_y, score, ssim_zero_padded
from derainkit.metrics.protocols import score_matlab_y, score_msgnn_rgb, score_y_float


def _gauss2d(size=11, sigma=1.5):
    g = cv2.getGaussianKernel(size, sigma)
    return g @ g.T


def ssim_valid_cv2(a: np.ndarray, b: np.ndarray, L: float = 255.0) -> float:
    """Wang's SSIM as BasicSR/MATLAB compute it: Gaussian filter, keep the fully covered region."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    w = _gauss2d()
    f = lambda x: cv2.filter2D(x, -1, w)[5:-5, 5:-5]  # noqa: E731
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def ssim_same_zero_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """MSGNN's SSIM: Gaussian window applied with zero padding, per channel, mean of the map."""
    w = _gauss2d()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[2]):
        def f(x):
            p = np.pad(x, 5)
            return np.einsum("ijkl,kl->ij", sliding_window_view(p, (11, 11)), w)
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mu1, mu2 = f(x), f(y)
        s1, s2, s12 = f(x * x) - mu1**2, f(y * y) - mu2**2, f(x * y) - mu1 * mu2
        vals.append(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2)))
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def pair():
    """A photo-like clean image and a degraded copy with streaks and noise."""
    from skimage import data

    gt = data.astronaut()[100:196, 150:278].astype(np.float64) / 255.0  # 96x128 RGB
    rng = np.random.default_rng(0)
    pred = gt + rng.normal(0, 0.03, gt.shape)
    pred[::7, :, :] += 0.15
    return np.clip(pred, -0.05, 1.05).astype(np.float32), gt.astype(np.float32)


def test_matlab_rgb2ycbcr_known_values():
    # MATLAB: rgb2ycbcr(uint8([255 0 0])) -> Y 81 (16 + 65.481 = 81.481); green 144.553 -> 145;
    # blue 40.966 -> 41; white 235; black 16.
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(rgb_to_y(rgb), [[81, 145, 41, 235, 16]])
    np.testing.assert_allclose(rgb_to_y(rgb, round_like_matlab=False), [[81.481, 144.553, 40.966, 235.0, 16.0]],
                               atol=1e-9)


def test_quantize_rounds_half_up_and_truncates():
    x = np.array([0.5 / 255, 1.5 / 255, 254.5 / 255, -0.2, 1.3, 0.99999])
    np.testing.assert_array_equal(quantize_uint8(x, "round"), [1, 2, 255, 0, 255, 255])
    np.testing.assert_array_equal(quantize_uint8(x, "trunc"), [0, 1, 254, 0, 255, 254])


def test_matlab_y_matches_independent_reference(pair):
    pred, gt = pair
    y_p = np.floor(16 + quantize_uint8(pred).astype(np.float64) @ (np.array([65.481, 128.553, 24.966]) / 255) + 0.5)
    y_g = np.floor(16 + quantize_uint8(gt).astype(np.float64) @ (np.array([65.481, 128.553, 24.966]) / 255) + 0.5)
    ref_psnr = 10 * np.log10(255**2 / np.mean((y_p - y_g) ** 2))
    s = score_matlab_y(pred, gt)
    assert s.psnr == pytest.approx(ref_psnr, abs=1e-9)
    assert s.ssim == pytest.approx(ssim_valid_cv2(y_p, y_g), abs=1e-6)


def test_y_float_matches_independent_reference(pair):
    pred, gt = pair
    coef = np.array([65.481, 128.553, 24.966]) / 255
    y_p = 16 + quantize_uint8(pred).astype(np.float64) @ coef
    y_g = 16 + quantize_uint8(gt).astype(np.float64) @ coef
    s = score_y_float(pred, gt)
    assert s.psnr == pytest.approx(10 * np.log10(255**2 / np.mean((y_p - y_g) ** 2)), abs=1e-9)
    assert s.ssim == pytest.approx(ssim_valid_cv2(y_p, y_g), abs=1e-6)


def test_msgnn_rgb_matches_independent_reference(pair):
    pred, gt = pair
    s = score_msgnn_rgb(pred, gt)
    mse = np.mean((np.clip(pred.astype(np.float64), 0, 1) - gt) ** 2)
    assert s.psnr == pytest.approx(20 * np.log10(1 / np.sqrt(mse)), abs=1e-9)
    # SSIM on the *unclipped* prediction, zero-padded borders included
    assert s.ssim == pytest.approx(ssim_same_zero_numpy(pred, gt), abs=1e-7)
    assert s.ssim != pytest.approx(ssim_same_zero_numpy(np.clip(pred, 0, 1), gt), abs=1e-7)


def test_protocols_differ_as_documented(pair):
    pred, gt = pair
    m, yf, rgb = (score(pred, gt, p) for p in ("matlab-y", "y-float", "msgnn-rgb"))
    assert abs(m.psnr - yf.psnr) < 0.15 and m.psnr != yf.psnr  # rounding Y moves PSNR by hundredths
    assert abs(m.psnr - rgb.psnr) > 0.3  # RGB vs Y is a different metric


def test_pinned_values(pair):
    """Regression pins (computed once by this code and cross-checked by the references above)."""
    pred, gt = pair
    s = score(pred, gt, "matlab-y")
    assert s.psnr == pytest.approx(PINNED["matlab-y"][0], abs=1e-4)
    assert s.ssim == pytest.approx(PINNED["matlab-y"][1], abs=1e-5)
    s = score(pred, gt, "msgnn-rgb")
    assert s.psnr == pytest.approx(PINNED["msgnn-rgb"][0], abs=1e-4)
    assert s.ssim == pytest.approx(PINNED["msgnn-rgb"][1], abs=1e-5)


PINNED = {"matlab-y": (25.95590, 0.667429), "msgnn-rgb": (24.06463, 0.620605)}


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    x = np.random.default_rng(3).random((20, 20, 3)).astype(np.float32)
    for p in ("matlab-y", "y-float", "msgnn-rgb"):
        s = score(x, x, p)
        assert s.psnr == float("inf") and s.ssim == pytest.approx(1.0)


def test_ssim_loss_is_differentiable_and_matches_metric(pair):
    pred, gt = pair
    t = torch.from_numpy(pred.transpose(2, 0, 1))[None].double().requires_grad_(True)
    g = torch.from_numpy(gt.transpose(2, 0, 1))[None].double()
    val = ssim_zero_padded(t, g)
    val.backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert val.item() == pytest.approx(ssim_same_zero_numpy(pred, gt), abs=1e-9)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown metric protocol 'psnr-rgb'"):
        get_protocol("psnr-rgb")
    with pytest.raises(ValueError, match="differ in shape"):
        score(np.zeros((20, 20, 3)), np.zeros((20, 21, 3)), "matlab-y")
    with pytest.raises(ValueError, match="at least 11×11"):
        score(np.zeros((8, 20, 3)), np.zeros((8, 20, 3)), "matlab-y")
    assert psnr(np.zeros(3), np.ones(3), 1.0) == pytest.approx(0.0)
