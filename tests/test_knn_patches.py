"""Patch extraction / folding with the official MSGNN padding rule (derainkit.knn.patches)."""
from __future__ import annotations

import pytest
import torch

from derainkit.errors import DerainkitError
from derainkit.knn import extract_patches, fold_patches, pad_amounts, patch_grid


def _manual_pad(size: int, l: int, s: int) -> tuple[int, int]:
    pad = 0
    while (size + pad - l) % s:
        pad += 1
    return pad // 2, pad - pad // 2


def _manual_extract(x: torch.Tensor, l: int, s: int) -> torch.Tensor:
    b, c, h, w = x.shape
    t, bo = _manual_pad(h, l, s)
    lf, r = _manual_pad(w, l, s)
    xp = torch.zeros(b, c, h + t + bo, w + lf + r, dtype=x.dtype)
    xp[:, :, t:t + h, lf:lf + w] = x
    out = []
    for i in range(0, xp.shape[2] - l + 1, s):
        for j in range(0, xp.shape[3] - l + 1, s):
            out.append(xp[:, :, i:i + l, j:j + l].reshape(b, -1))  # (c, kh, kw) order
    return torch.stack(out, 1)


@pytest.mark.parametrize("size,l,s,expected", [
    (64, 3, 3, (1, 1)), (321, 3, 3, (0, 0)), (481, 3, 3, (1, 1)), (161, 3, 3, (0, 1)), (32, 3, 3, (0, 1)),
    (16, 3, 3, (1, 1)), (38, 3, 3, (0, 1)), (30, 3, 3, (0, 0)), (7, 3, 3, (1, 1)), (8, 3, 2, (0, 1)),
    (2, 3, 3, (0, 1)), (10, 5, 4, (1, 2)),
])
def test_pad_amounts_official_rule(size, l, s, expected):
    assert pad_amounts(size, l, s) == expected
    assert pad_amounts(size, l, s) == _manual_pad(size, l, s)


@pytest.mark.parametrize("h,w,l,s,grid", [
    (64, 64, 3, 3, (22, 22)), (321, 481, 3, 3, (107, 161)), (30, 38, 3, 3, (10, 13)), (7, 8, 3, 3, (3, 3)),
    (161, 241, 3, 3, (54, 81)), (81, 121, 3, 3, (27, 41)), (32, 32, 3, 3, (11, 11)), (16, 16, 3, 3, (6, 6)),
    # the grids of the official 120×150 eval fixture (query, ½, ¼, exemplar 100×140)
    (120, 150, 3, 3, (40, 50)), (60, 75, 3, 3, (20, 25)), (100, 140, 3, 3, (34, 47)),
    (7, 8, 3, 2, (3, 4)),
])
def test_patch_grid(h, w, l, s, grid):
    assert patch_grid(h, w, l, s) == grid


@pytest.mark.parametrize("h,w,l,s", [(7, 8, 3, 3), (64, 64, 3, 3), (30, 38, 3, 3), (321, 481, 3, 3),
                                     (9, 11, 3, 2), (12, 10, 5, 3), (6, 7, 2, 1), (5, 5, 3, 4)])
def test_extract_matches_manual_loop(h, w, l, s):
    torch.manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w)
    p, grid = extract_patches(x, l, s)
    ref = _manual_extract(x, l, s)
    assert grid == patch_grid(h, w, l, s)
    assert p.shape == (2, grid[0] * grid[1], 3 * l * l)
    assert p.is_contiguous()
    assert torch.equal(p, ref)


def test_extract_large_odd_size_grid():
    x = torch.randn(1, 2, 321, 481)
    p, grid = extract_patches(x, 3, 3)
    assert grid == (107, 161) and p.shape == (1, 107 * 161, 18)
    # patch (i, j) = padded[:, :, 3i:3i+3, 3j:3j+3]; cols are padded 1/1, rows not at all
    i, j = 50, 0
    expected = torch.zeros(2, 3, 3)
    expected[:, :, 1:] = x[0, :, 3 * i:3 * i + 3, 0:2]
    assert torch.equal(p[0, i * 161 + j], expected.reshape(-1))


@pytest.mark.parametrize("h,w", [(7, 8), (64, 64), (30, 38), (13, 5)])
def test_fold_is_identity_when_stride_equals_patch(h, w):
    x = torch.randn(2, 4, h, w)
    p, _ = extract_patches(x, 3, 3)
    assert torch.equal(fold_patches(p, (h, w), 3, 3), x)
    assert torch.equal(fold_patches(p, (h, w), 3, 3, average=False), x)


@pytest.mark.parametrize("h,w,l,s", [(9, 11, 3, 2), (7, 8, 3, 1), (12, 10, 5, 3)])
def test_fold_averages_overlaps(h, w, l, s):
    torch.manual_seed(0)
    b, c = 2, 3
    n1, n2 = patch_grid(h, w, l, s)
    p = torch.randn(b, n1 * n2, c * l * l)
    t, bo = pad_amounts(h, l, s)
    lf, r = pad_amounts(w, l, s)
    acc = torch.zeros(b, c, h + t + bo, w + lf + r, dtype=torch.float64)
    cnt = torch.zeros(h + t + bo, w + lf + r, dtype=torch.float64)
    for i in range(n1):
        for j in range(n2):
            acc[:, :, i * s:i * s + l, j * s:j * s + l] += p[:, i * n2 + j].view(b, c, l, l).double()
            cnt[i * s:i * s + l, j * s:j * s + l] += 1
    avg = (acc / cnt)[:, :, t:t + h, lf:lf + w]
    summed = acc[:, :, t:t + h, lf:lf + w]
    torch.testing.assert_close(fold_patches(p, (h, w), l, s).double(), avg, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fold_patches(p, (h, w), l, s, average=False).double(), summed, rtol=1e-6, atol=1e-6)
    # extract -> fold with averaging reproduces the map (every pixel is covered when s <= l)
    x = torch.randn(b, c, h, w)
    torch.testing.assert_close(fold_patches(extract_patches(x, l, s)[0], (h, w), l, s), x)


def test_fold_gaps_when_stride_exceeds_patch():
    x = torch.randn(1, 1, 5, 5)
    y = fold_patches(extract_patches(x, 2, 3)[0], (5, 5), 2, 3)
    assert torch.isfinite(y).all()
    assert (y[0, 0, 2, :] == 0).all()  # rows between patches stay 0, no division by a zero count


def test_patch_errors():
    with pytest.raises(DerainkitError, match="b×c×H×W"):
        extract_patches(torch.randn(3, 8, 8), 3, 3)
    with pytest.raises(DerainkitError, match="too small"):
        extract_patches(torch.randn(1, 1, 1, 8), 3, 1)
    with pytest.raises(DerainkitError, match="positive"):
        extract_patches(torch.randn(1, 1, 8, 8), 0, 1)
    with pytest.raises(DerainkitError, match="do not match"):
        fold_patches(torch.randn(1, 10, 27), (9, 9), 3, 3)
    with pytest.raises(DerainkitError, match="multiple of"):
        fold_patches(torch.randn(1, 9, 26), (9, 9), 3, 3)
    with pytest.raises(DerainkitError, match="b×n×e"):
        fold_patches(torch.randn(9, 27), (9, 9), 3, 3)
