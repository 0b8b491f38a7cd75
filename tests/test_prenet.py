"""PReNet: architecture, official-weight loading, and the published Rain100L figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derainkit.errors import CheckpointError, ConfigError
from derainkit.models import build_model, get_model_spec
from derainkit.models.prenet import PReNet, PReNetConfig, load_prenet_weights, official_to_kit

WEIGHTS = ("weights", "prenet", "Rain100L", "PReNet6_net_latest.pth")


def _official_like_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state_dict with the official key names and shapes (32 keys)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv0.0.weight": torch.randn(32, 6, 3, 3, generator=g), "conv0.0.bias": torch.randn(32, generator=g)}
    for j in range(1, 6):
        for i in (0, 2):
            sd[f"res_conv{j}.{i}.weight"] = torch.randn(32, 32, 3, 3, generator=g) * 0.05
            sd[f"res_conv{j}.{i}.bias"] = torch.randn(32, generator=g) * 0.05
    for gate in "ifgo":
        sd[f"conv_{gate}.0.weight"] = torch.randn(32, 64, 3, 3, generator=g) * 0.05
        sd[f"conv_{gate}.0.bias"] = torch.randn(32, generator=g) * 0.05
    sd["conv.0.weight"], sd["conv.0.bias"] = torch.randn(3, 32, 3, 3, generator=g) * 0.05, torch.randn(3, generator=g)
    return sd


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, stages: int = 6) -> torch.Tensor:
    """PReNet written directly from the description in shared/README.md, with separate gate convs."""
    conv = lambda t, k: torch.nn.functional.conv2d(t, sd[k + ".weight"], sd[k + ".bias"], padding=1)  # noqa: E731
    b, _, h, w = x.shape
    est, hid, cell = x, torch.zeros(b, 32, h, w), torch.zeros(b, 32, h, w)
    for _ in range(stages):
        f = torch.relu(conv(torch.cat([x, est], 1), "conv0.0"))
        z = torch.cat([f, hid], 1)
        i, fg = torch.sigmoid(conv(z, "conv_i.0")), torch.sigmoid(conv(z, "conv_f.0"))
        g, o = torch.tanh(conv(z, "conv_g.0")), torch.sigmoid(conv(z, "conv_o.0"))
        cell = fg * cell + i * g
        hid = o * torch.tanh(cell)
        f = hid
        for j in range(1, 6):
            r = torch.relu(conv(torch.relu(conv(f, f"res_conv{j}.0")), f"res_conv{j}.2"))
            f = torch.relu(f + r)
        est = conv(f, "conv.0") + x
    return est


def test_parameter_count_and_key_map():
    model = PReNet()
    assert sum(p.numel() for p in model.parameters()) == 168_963
    mapped = official_to_kit(_official_like_state())
    assert set(mapped) == set(model.state_dict())


def test_forward_equals_reference_with_official_layout():
    sd = _official_like_state(1)
    model = PReNet()
    model.load_state_dict(official_to_kit(sd))
    x = torch.rand(2, 3, 17, 23)  # odd sizes, batch of two
    with torch.no_grad():
        ours = model(x)
        stages = model(x, return_stages=True)
    assert ours.shape == x.shape and len(stages) == 6
    torch.testing.assert_close(ours, _reference_forward(sd, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stages[-1], ours)


def test_module_prefix_and_config_switches(tmp_path):
    sd = {"module." + k: v for k, v in _official_like_state(2).items()}
    torch.save(sd, tmp_path / "dp.pth")
    load_prenet_weights(PReNet(), tmp_path / "dp.pth")  # DataParallel checkpoints load too
    prn = PReNet(PReNetConfig(recurrent=False))
    assert prn.gates is None
    assert sum(p.numel() for p in prn.parameters()) == 168_963 - 4 * (32 * 64 * 9 + 32)
    with pytest.raises(ConfigError, match=r"unknown PReNet config key\(s\) \['stagez'\]"):
        PReNetConfig.from_dict({"stagez": 3})


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: weights file not found"):
        load_prenet_weights(PReNet(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot be read as a weights file"):
        load_prenet_weights(PReNet(), tmp_path / "junk.pth")
    other = {"head.weight": torch.zeros(8, 6, 3, 3)}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: does not fit"):
        load_prenet_weights(PReNet(), tmp_path / "other.pth")
    partial = _official_like_state()
    del partial["conv_o.0.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="partial.pth: not an official PReNet state_dict: missing key"):
        load_prenet_weights(PReNet(), tmp_path / "partial.pth")


def test_official_weights_load(shared):
    model = build_model("prenet", weights=shared(*WEIGHTS))
    assert not model.training
    assert get_model_spec("prenet").official_quantize == "trunc"


@pytest.mark.slow
def test_official_weights_reproduce_rain100l_subset(shared):
    """norain-1..10 of Rain100L test, official truncation, matlab-y: the figures we measured.

    An independent port reported 37.68 dB / 0.9783 on the same ten images (shared/README.md);
    the full-set figure (37.42 / 0.9784 there) is in README.md with the command that gives it.
    """
    from derainkit.io import image_to_tensor, read_image, tensor_to_image
    from derainkit.metrics import score

    root = shared("data", "rain100l", "test")
    model = build_model("prenet", weights=shared(*WEIGHTS))
    scores = {p: [] for p in ("matlab-y", "y-float", "msgnn-rgb")}
    for i in range(1, 11):
        rainy = read_image(root / "rain" / f"norain-{i}.png")
        clean = read_image(root / "norain" / f"norain-{i}.png")
        with torch.inference_mode():
            out = tensor_to_image(model(image_to_tensor(rainy)))
        for p in scores:
            scores[p].append(score(out, clean, p, quantize="trunc"))
    mean = {p: (np.mean([s.psnr for s in v]), np.mean([s.ssim for s in v])) for p, v in scores.items()}
    assert mean["matlab-y"][0] == pytest.approx(37.6776, abs=2e-3)
    assert mean["matlab-y"][1] == pytest.approx(0.97831, abs=5e-5)
    assert mean["y-float"][0] == pytest.approx(37.7348, abs=2e-3)
    assert mean["msgnn-rgb"][0] == pytest.approx(36.5023, abs=2e-3)
    assert mean["msgnn-rgb"][1] == pytest.approx(0.97717, abs=5e-5)
