"""NLCL networks: config, architecture facts (parameter counts, feature shapes, quirk Q2), the [0, 1]
inference wrapper, weight loading and its errors, and the official initialisation order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from derainkit.errors import CheckpointError, ConfigError
from derainkit.models.nlcl import (
    NLCLConfig,
    NLCLDerain,
    NLCLDiscriminator,
    NLCLGenerator,
    build_nlcl_nets,
    load_generator_file,
    load_nlcl_weights,
    load_official_nets,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = NLCLConfig(channels=8, res_blocks=2)


def test_config_is_strict_and_round_trips():
    cfg = NLCLConfig.from_dict({"channels": 16, "res_blocks": 4})
    assert NLCLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown NLCL config key\(s\) \['chanels'\]; valid keys: \["):
        NLCLConfig.from_dict({"chanels": 16})
    with pytest.raises(ConfigError, match="must be an integer"):
        NLCLConfig.from_dict({"channels": 1.5})
    with pytest.raises(ConfigError, match="invalid NLCL config"):
        NLCLConfig.from_dict({"channels": 0})
    assert NLCLConfig().disc_conv_widths() == {0: 64, 3: 128, 7: 256, 11: 512, 14: 1}
    with pytest.raises(ConfigError, match="not a conv"):
        NLCLConfig().disc_feature_widths([0, 5], include_input=False)


@pytest.mark.parametrize("faithful,adv", [(True, [3, 64, 128, 256]), (False, [64, 128, 256, 512])])
def test_parameter_counts_match_the_official_networks(faithful, adv):
    nets = build_nlcl_nets(faithful=faithful)
    counts = nets.parameter_counts()
    assert counts["netBack"] == counts["netRain"] == 316_195
    assert counts["netD"] == 2_764_737
    assert counts["netGenSample"] == 371_200  # five Linear(32→256)·Linear(256→256) heads
    assert nets.adv_back_head.in_widths == nets.adv_rain_head.in_widths == tuple(adv)
    heads = sum(c * 256 + 256 + 256 * 256 + 256 for c in adv)
    assert counts["netAdvBackSample"] == counts["netAdvRainSample"] == heads
    if faithful:
        assert heads == 379_648  # the fixture's count (official mlp_4 on layer 11 left out)


def test_discriminator_shapes_and_the_inplace_leakyrelu_quirk():
    disc = NLCLDiscriminator().eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert disc(x).shape == (1, 1, 30, 30)
        faithful = disc.encode(x, [0, 3, 7, 11], faithful=True)
        fixed = disc.encode(x, [0, 3, 7, 11], faithful=False)
        conv0 = disc.model[0](x)
    assert [tuple(f.shape[1:]) for f in faithful] == [(3, 256, 256), (64, 255, 255), (128, 127, 127),
                                                      (256, 63, 63), (512, 31, 31)]
    assert [tuple(f.shape[1:]) for f in fixed] == [(64, 255, 255), (128, 127, 127), (256, 63, 63), (512, 31, 31)]
    assert torch.equal(faithful[0], x)
    torch.testing.assert_close(faithful[1], F.leaky_relu(conv0, 0.2))  # Q2: post-activation
    torch.testing.assert_close(fixed[0], conv0)  # fixed: the raw conv output
    for a, b in zip(faithful[2:], fixed[1:]):
        torch.testing.assert_close(a, b)


def test_generator_encode_returns_the_requested_sequential_outputs():
    gen = NLCLGenerator(SMALL).eval()
    x = torch.rand(2, 3, 24, 20) * 2 - 1
    with torch.no_grad():
        feats = gen.encode(x, [0, 2, 4])
        h = gen.gen[0](x)
        ref = [h]
        for i in (1, 2, 3, 4):
            h = gen.gen[i](h)
            if i in (2, 4):
                ref.append(h)
        out = gen(x)
    assert len(feats) == 3 and all(torch.equal(a, b) for a, b in zip(feats, ref))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="increasing"):
        gen.encode(x, [2, 0])


def test_derain_wrapper_scales_like_the_official_test():
    model = NLCLDerain(SMALL).eval()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        signed = (x - 0.5) / 0.5  # official ToTensor + Normalize(0.5, 0.5)
        assert torch.equal(model(x), (model.background(signed) + 1) / 2)
    with pytest.raises(CheckpointError, match="latest_net_Rain.pth"):
        model.rain_layer()
    model.rain_loaded = True
    with torch.no_grad():
        back, rain = model.layers(x)
        assert torch.equal(rain, model.rain(signed) / 2)
        assert torch.equal(back, model(x))


def test_weights_files_load_strictly_with_one_line_errors(tmp_path):
    src = NLCLDerain(SMALL)
    back, rain = tmp_path / "latest_net_Back.pth", tmp_path / "latest_net_Rain.pth"
    torch.save(src.background.state_dict(), back)
    model = load_nlcl_weights(NLCLDerain(SMALL), back)
    assert not model.rain_loaded and torch.equal(model.background.gen[0].weight, src.background.gen[0].weight)
    torch.save(src.rain.state_dict(), rain)
    model = load_nlcl_weights(NLCLDerain(SMALL), back)
    assert model.rain_loaded and torch.equal(model.rain.gen[-1].bias, src.rain.gen[-1].bias)
    with pytest.raises(CheckpointError, match="is NLCL's rain generator; pass the background generator"):
        load_nlcl_weights(NLCLDerain(SMALL), rain)
    kit = tmp_path / "kit.pth"
    torch.save({"model": src.state_dict()}, kit)
    model = load_nlcl_weights(NLCLDerain(SMALL), kit)
    assert model.rain_loaded and torch.equal(model.rain.gen[0].weight, src.rain.gen[0].weight)
    corrupt = tmp_path / "corrupt_Back.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"corrupt_Back.pth: cannot be read as a weights file") as exc:
        load_nlcl_weights(NLCLDerain(SMALL), corrupt)
    assert "\n" not in str(exc.value)
    with pytest.raises(CheckpointError, match="missing.pth: weights file not found"):
        load_nlcl_weights(NLCLDerain(SMALL), tmp_path / "missing.pth")
    wrong = tmp_path / "other.pth"
    torch.save({"conv0.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match=r"other.pth: not an NLCL generator state_dict: missing keys"):
        load_nlcl_weights(NLCLDerain(SMALL), wrong)
    with pytest.raises(CheckpointError, match=r"gen.0.weight has shape \(8, 3, 3, 3\), an NLCL generator needs "
                                              r"\(32, 3, 3, 3\)"):
        load_generator_file(NLCLGenerator(NLCLConfig(res_blocks=2)), back)  # same keys, other width


def test_shipped_official_weights_load_strictly(shared):
    back = shared("weights", "nlcl", "latest_net_Back.pth")
    model = load_nlcl_weights(NLCLDerain(), back)
    assert model.rain_loaded  # latest_net_Rain.pth lies beside it
    assert sum(p.numel() for p in model.background.parameters()) == 316_195


def test_official_initialisation_order_reproduces_the_fixture_weights(shared):
    """Seed 0 and the official construction order give the fixture's initial weights bit for bit, so the
    faithful training task can start exactly where the official code starts."""
    states = torch.load(shared("fixtures", "nlcl", "nets_state_dict.pt"), weights_only=True)
    nets = build_nlcl_nets(faithful=True, seed=0)
    for name in ("netRain", "netBack", "netD", "netGenSample", "netAdvBackSample", "netAdvRainSample"):
        own = nets.official_module(name).state_dict()
        assert sorted(own) == sorted(states[name]), name
        for key, value in states[name].items():
            assert torch.equal(own[key], value), f"{name}.{key}"
    load_official_nets(build_nlcl_nets(faithful=True), states)  # strict except the omitted mlp_4
    with pytest.raises(CheckpointError, match=r"missing networks \['netD'\]"):
        load_official_nets(build_nlcl_nets(faithful=True), {k: v for k, v in states.items() if k != "netD"})
