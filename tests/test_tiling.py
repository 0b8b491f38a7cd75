"""Tiled inference: coverage, blending, automatic plans and the recorded TilePlan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derainkit.errors import DerainkitError
from derainkit.infer import Predictor, plan_tiles, resolve_device, run_tiled
from derainkit.infer.tiling import tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(100, 40, 8), (64, 64, 8), (65, 64, 8), (1000, 128, 32)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all() and starts[0] == 0 and starts[-1] + min(tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # consecutive tiles share at least `overlap` pixels


@pytest.mark.parametrize("blend", ["linear", "average"])
def test_pointwise_model_is_tiled_exactly(blend):
    """A per-pixel function gives the same result tiled or not, whatever the blend."""
    img = torch.rand(1, 3, 150, 211)
    fn = lambda x: x * 0.5 + x**2  # noqa: E731
    plan = plan_tiles(150, 211, 1.0, tile=64, overlap=16, blend=blend)
    assert plan.tile == 64
    torch.testing.assert_close(run_tiled(fn, img, plan), fn(img))


def test_local_model_matches_inside_overlap():
    """A 3x3 box filter differs only near tile seams, and by little with linear blending."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
    torch.nn.init.constant_(conv.weight, 1 / 27)
    img = torch.rand(1, 3, 120, 130)
    with torch.no_grad():
        full = conv(img)
        tiled = run_tiled(conv, img, plan_tiles(120, 130, 1.0, tile=64, overlap=16))
    err = (full - tiled).abs()
    assert err.max() < 0.05  # seams are blended, not hard cuts
    assert err[:, :, 2:40, 2:40].max() < 1e-6  # far from any seam the result is identical


def test_auto_plan_uses_memory_budget():
    whole = plan_tiles(512, 512, 100.0, tile="auto", memory_budget=10**9)
    assert whole.tile is None and "fits" in whole.reason
    tiled = plan_tiles(4000, 3000, 3000.0, tile="auto", memory_budget=2 * 2**30)
    assert tiled.tile is not None and tiled.tile**2 * 3000.0 <= 2 * 2**30 and tiled.tile % 8 == 0
    assert plan_tiles(4000, 3000, 3000.0, tile="none").tile is None
    with pytest.raises(ValueError, match="overlap 40 must be less than half the tile 64"):
        plan_tiles(500, 500, 1.0, tile=64, overlap=40)


def test_predictor_records_plan_and_device_errors():
    model = torch.nn.Conv2d(3, 3, 1)
    pred = Predictor(model, bytes_per_pixel=1000.0, device="cpu", tile="auto", memory_budget=200 * 200 * 1000)
    out, plan = pred(np.random.rand(300, 300, 3).astype(np.float32))
    assert out.shape == (300, 300, 3) and plan.tile is not None and plan.to_dict()["overlap"] > 0
    out, plan = pred(np.random.rand(100, 100, 3).astype(np.float32))
    assert plan.tile is None
    if not torch.cuda.is_available():
        with pytest.raises(DerainkitError, match="no CUDA GPU"):
            resolve_device("cuda")
