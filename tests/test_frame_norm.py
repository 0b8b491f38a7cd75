"""Frame-norm tiled inference: tiles with whole-frame InstanceNorm statistics equal full-frame inference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from derainkit.data.synthetic import add_rain
from derainkit.infer import Predictor, TilePlan, run_tiled
from derainkit.infer.frame_norm import (
    frame_norm_forward,
    frame_norm_tiled,
    receptive_radius,
    run_frame_norm,
)
from derainkit.infer.tiling import tile_starts
from derainkit.models.nlcl import NLCLDerain, load_nlcl_weights
from conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(height: int, width: int) -> np.ndarray:
    """A rainy photo: the first real NLCL photo resized, else a smooth synthetic scene, plus streaks."""
    import cv2

    path = SHARED / "data" / "nlcl_realrain" / "rainy" / "Eg1.JPG"
    if path.exists():
        from derainkit.io import load_image

        return cv2.resize(load_image(path).pixels, (width, height), interpolation=cv2.INTER_AREA)
    g = np.random.default_rng(0)
    low = g.random((height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
    clean = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 0.7 + 0.15
    return add_rain(clean, seed=1)


def _nlcl() -> NLCLDerain:
    weights = SHARED / "weights" / "nlcl" / "latest_net_Back.pth"
    if weights.exists():
        return load_nlcl_weights(NLCLDerain(), weights).eval()
    torch.manual_seed(0)  # the architecture is what matters here; the shipped weights when available
    return NLCLDerain().eval()


def test_nlcl_tiles_equal_full_frame_within_one_grey_level():
    """192×384 in 96-px tiles (2×4 = 8 tiles) through the full 16-block generator."""
    model = _nlcl()
    x = torch.from_numpy(_photo(192, 384).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        full = model(x)
        tiled = run_frame_norm(model, x, tile=96)
        naive = run_tiled(model, x, TilePlan(96, 16, "linear", "naive tiles"))
    assert len(tile_starts(192, 96, 0)) * len(tile_starts(384, 96, 0)) == 8
    assert (tiled - full).abs().max() < 1e-4
    quant = lambda t: (t.clamp(0, 1) * 255).to(torch.uint8).to(torch.int16)  # noqa: E731  (official trunc)
    assert (quant(tiled) - quant(full)).abs().max() <= 1
    # what the statistics pass is for: tiles normalised on their own are visibly different
    assert (quant(naive) - quant(full)).abs().max() > 3


def test_nlcl_stages_start_at_their_norms():
    model = NLCLDerain().eval()
    stages = model.frame_norm_stages()
    assert len(stages) == 2 * 16 + 2
    assert [receptive_radius(s) for s in stages] == [2] + [1] * 32 + [2]
    model.rain_loaded = True
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(run_frame_norm(model.rain_layer(), x, 24), model.rain_layer()(x),
                                   atol=1e-5, rtol=0)


class _Block(nn.Module):
    """conv → affine IN → ReLU → dilated conv, IN in the middle: measured by rerunning the stage's prefix."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=2, dilation=2)
        nn.init.normal_(self.norm.weight, 1.0, 0.3)
        nn.init.normal_(self.norm.bias, 0.0, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.norm(self.conv1(x))))


def test_generic_sequential_with_norms_inside_stages_and_a_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.InstanceNorm2d(6), _Block(6), _Block(6),
                          nn.Conv2d(6, 3, 3, padding=1)).eval()
    assert [receptive_radius(s) for s in model] == [2, 0, 3, 3, 1]
    x = torch.rand(2, 3, 50, 70)  # per-image statistics
    with torch.no_grad():
        torch.testing.assert_close(run_frame_norm(model, x, 16), model(x), atol=1e-5, rtol=0)
        # the whole model as one stage: every norm measured by a pass up to it (slow but still exact)
        torch.testing.assert_close(run_frame_norm([model], x, 32), model(x), atol=1e-5, rtol=0)


def test_running_stats_norms_are_left_alone_and_bad_stages_refused():
    torch.manual_seed(0)
    bn_like = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, track_running_stats=True)).eval()
    x = torch.rand(1, 3, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(run_frame_norm(bn_like, x, 8), bn_like(x), atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="stride-1 convolutions"):
            run_frame_norm(nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1)), x, 8)
        norm = nn.InstanceNorm2d(3)
        with pytest.raises(ValueError, match="calls an InstanceNorm twice"):
            run_frame_norm([nn.Sequential(norm, norm)], x, 8)
        with pytest.raises(ValueError, match="keep the resolution"):
            run_frame_norm([nn.Upsample(scale_factor=2)], x, 8)


def test_predictor_integration_paths():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 3, padding=1)).eval()
    pixels = np.random.default_rng(0).random((70, 90, 3), dtype=np.float32)
    x = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        expected = model(x)
        # run_tiled's contract: the whole image when the plan says so, exact tiles otherwise
        assert torch.equal(frame_norm_tiled(model, x, TilePlan(None, 0, "linear", "fits")), expected)
        torch.testing.assert_close(frame_norm_tiled(model, x, TilePlan(32, 8, "linear", "tiled")), expected,
                                   atol=1e-5, rtol=0)
    # a forward hook for today's Predictor (its own tiling off), no change to the Predictor needed
    out, plan = Predictor(model, 100.0, device="cpu", tile=None, forward=frame_norm_forward(32))(pixels)
    assert plan.tile is None
    np.testing.assert_allclose(out, expected[0].permute(1, 2, 0).numpy(), atol=1e-5)
