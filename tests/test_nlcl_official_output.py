"""The shipped NLCL background generator reproduces the official code's shipped outputs.

``../shared/data/nlcl_realrain/rainy/Eg1..7.JPG`` through ``NLCLDerain`` (the kit's [0, 1] convention,
which scales to [-1, 1] exactly as the official test's ToTensor + Normalize(0.5, 0.5)) with
``latest_net_Back.pth``, quantised as the official ``util.tensor2im`` saved them: clamp to [-1, 1],
(x + 1) / 2 · 255, truncation to uint8 (the registry's ``official_quantize="trunc"`` on the [0, 1]
output). Measured: max |Δ| = 1 grey level on every image, on about 2e-5 of the values (truncation
boundaries), none larger.

Cost: one full-frame 1024×512 inference per image (35 full-resolution 32-channel convolutions; the
InstanceNorms need the whole frame), about 10-25 s each on a 2-core CPU, hence ``slow``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derainkit.io import image_to_tensor, load_image
from derainkit.models.nlcl import NLCLDerain, load_nlcl_weights

pytestmark = pytest.mark.slow


def official_uint8(pixels01: np.ndarray) -> np.ndarray:
    """The official save: uint8((clamp(B̂, −1, 1) + 1) / 2 · 255) = trunc(clip(x, 0, 1) · 255) for x in [0, 1]."""
    return (np.clip(pixels01, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    from conftest import shared_path

    return load_nlcl_weights(NLCLDerain(), shared_path("weights", "nlcl", "latest_net_Back.pth")).eval()


@pytest.mark.parametrize("name", [f"Eg{i}" for i in range(1, 8)])
def test_shipped_weights_reproduce_the_shipped_outputs(shared, model, name):
    rainy = load_image(shared("data", "nlcl_realrain", "rainy", f"{name}.JPG"))
    official = load_image(shared("data", "nlcl_realrain", "official_output", f"{name}.png"))
    assert official.bit_depth == 8 and official.pixels.shape == rainy.pixels.shape == (512, 1024, 3)
    with torch.inference_mode():
        out = model(image_to_tensor(rainy.pixels))[0].permute(1, 2, 0).numpy()
    ours = official_uint8(out).astype(np.int16)
    theirs = np.round(official.pixels * 255).astype(np.int16)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, f"{name}: max |Δ| {diff.max()} grey levels"
    assert (diff > 0).mean() < 1e-3, f"{name}: {(diff > 0).mean():.2e} of the values differ"
