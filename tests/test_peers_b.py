"""Table 1 peers, part B: DCSFN, MSPFN, RCDNet, DualGCN, MOSS (architectures, configs, losses, training).

Full-size networks are only built to count parameters and run one tiny forward; everything that trains
uses the ``small`` presets on tiny crops, so the file stays well under a minute on two loaded cores.
"""
from __future__ import annotations

import math

import pytest
import torch

from derainkit.errors import CheckpointError, ConfigError
from derainkit.losses import LOSSES
from derainkit.losses.peers_b import PEER_LOSSES, laplacian, mspfn_loss, rcdnet_stage_loss
from derainkit.models import dcsfn, dualgcn, moss, mspfn, rcdnet
from derainkit.weights import export_safetensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (module, model class, config class, loader)
PEERS = {
    "dcsfn": (dcsfn, dcsfn.DCSFN, dcsfn.DCSFNConfig, dcsfn.load_dcsfn_weights),
    "mspfn": (mspfn, mspfn.MSPFN, mspfn.MSPFNConfig, mspfn.load_mspfn_weights),
    "rcdnet": (rcdnet, rcdnet.RCDNet, rcdnet.RCDNetConfig, rcdnet.load_rcdnet_weights),
    "dualgcn": (dualgcn, dualgcn.DualGCN, dualgcn.DualGCNConfig, dualgcn.load_dualgcn_weights),
    "moss": (moss, moss.MOSS, moss.MOSSConfig, moss.load_moss_weights),
}

# Counts of the official networks (measured from the official code: PyTorch modules, or for MSPFN and
# DualGCN the TF graphs' variables), with the config that builds each here.
OFFICIAL_COUNTS = [
    ("dcsfn", {}, 6_453_147),
    ("mspfn", {}, 20_995_776),
    ("mspfn", {"preset": "m17n1"}, 15_823_424),  # the released pretrained graph
    ("rcdnet", {}, 3_166_355),
    ("dualgcn", {}, 2_731_071),
    ("moss", {}, 2_855_939),  # the 2021 release (MSGNN Table 1: 2.86 M)
    ("moss", {"variant": "stochastic"}, 2_493_140),  # the 2023 training code's generator
]


def _n(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _small(name: str, **extra) -> torch.nn.Module:
    _, cls, cfg, _ = PEERS[name]
    torch.manual_seed(0)
    return cls(cfg.from_dict({"preset": "small", **extra}))


@pytest.mark.parametrize("name,config,count", OFFICIAL_COUNTS)
def test_official_parameter_counts_and_one_forward(name, config, count):
    _, cls, cfg, _ = PEERS[name]
    torch.manual_seed(0)
    model = cls(cfg.from_dict(config)).eval()
    assert _n(model) == count
    if config:  # one tiny full-size forward per family is enough
        return
    x = torch.rand(1, 3, 33, 35)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_frozen_parameters_are_exactly_the_officially_unused_ones():
    # RCDNet: 15 unused kernel copies, the never-called Mnet (74,528) and eta1; dropping them keeps the function
    full, lean = rcdnet.RCDNet(), rcdnet.RCDNet(rcdnet.RCDNetConfig(official_unused=False))
    assert _n(full) - _n(full, trainable=True) == 15 * 3 * 32 * 81 + 74_528 + 1
    assert _n(lean) == _n(lean, trainable=True) == 2_975_186
    # MSPFN: the zero-state LSTM's h kernels and forget gate; MOSS: the memory items
    assert _n(mspfn.MSPFN(), trainable=True) == 20_995_776 - sum(
        4 * f * f * 9 + 32 * f * 9 + f for f in (256, 128, 64))
    assert _n(moss.MOSS(), trainable=True) == 2_855_939 - 512 * 96


@pytest.mark.parametrize("name", list(PEERS))
def test_small_forward_odd_sizes_and_finite_gradients(name):
    model = _small(name).train()
    x = torch.rand(2, 3, 37, 53)
    y = model(x)
    assert y.shape == (2, 3, 37, 53)
    (y - x).abs().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} gets no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        else:
            assert p.grad is None
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)  # below DCSFN's 32 px, not /4, not /8


def _train_steps(model: torch.nn.Module, loss_of, steps: int = 6, lr: float = 1e-3) -> tuple[float, float]:
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 3, 32, 32, generator=g)
    rainy = (clean + 0.3 * (torch.rand(2, 1, 32, 32, generator=g) > 0.9)).clamp(0, 1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_of(model, rainy, clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        final = float(loss_of(model, rainy, clean))
    return losses[0], final


@pytest.mark.parametrize("name", ["dcsfn", "mspfn", "dualgcn", "moss"])
def test_short_training_with_the_recipe_loss_reduces_it(name):
    module = PEERS[name][0]
    loss_fn = {**LOSSES, **PEER_LOSSES}[module.RECIPE["loss"]]
    torch.manual_seed(0)
    first, last = _train_steps(_small(name), lambda m, r, c: loss_fn(m(r), c))
    assert math.isfinite(last) and last < first


def test_rcdnet_stage_supervision_trains():
    model = _small("rcdnet")
    first, last = _train_steps(model, lambda m, r, c: rcdnet_stage_loss(m(r, return_stages=True), r, c))
    assert math.isfinite(last) and last < first
    stages = model(torch.rand(1, 3, 17, 19), return_stages=True)
    assert len(stages.backgrounds) == model.config.stages + 1 and len(stages.rain_layers) == model.config.stages
    ones = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(model.eval()(ones), model(ones, return_stages=True).backgrounds[-1])


@pytest.mark.parametrize("name", list(PEERS))
def test_strict_configs_presets_and_round_trip(name):
    module, _, cfg, _ = PEERS[name]
    with pytest.raises(ConfigError, match=r"unknown .* config key\(s\) \['nope'\]; valid keys"):
        cfg.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="preset='huge'"):
        cfg.from_dict({"preset": "huge"})
    for preset in module.PRESETS:
        c = cfg.from_dict({"preset": preset})
        assert cfg.from_dict(c.to_dict()) == c
    assert cfg.from_dict(None) == cfg()
    assert set(module.RECIPE) <= {"loss", "optimizer", "lr", "lr_milestones", "lr_gamma", "crop", "batch", "epochs",
                                  "iterations", "seed", "lr_policy", "lr_decay_every", "lr_floor"}
    assert module.RECIPE["loss"] in {**LOSSES, **PEER_LOSSES}


@pytest.mark.parametrize("name", list(PEERS))
def test_recipes_are_valid_run_config_overrides(name):
    from derainkit.train.config import RunConfig

    recipe = dict(PEERS[name][0].RECIPE)
    loss = recipe.pop("loss")
    cfg = RunConfig.from_dict({"model": "prenet", **recipe, "loss": loss if loss in LOSSES else "mse"})
    assert cfg.lr == recipe["lr"] and tuple(cfg.lr_milestones) == tuple(recipe["lr_milestones"])


def test_config_values_are_checked():
    with pytest.raises(ConfigError, match="recurrent"):
        dcsfn.DCSFNConfig(recurrent="transformer")
    with pytest.raises(ConfigError, match="three values"):
        mspfn.MSPFNConfig.from_dict({"rcabs": [1, 1]})
    with pytest.raises(ConfigError, match="stages >= 2"):
        rcdnet.RCDNetConfig(stages=1)
    with pytest.raises(ConfigError, match="multiple of 4"):
        dualgcn.DualGCNConfig(channels=18)
    with pytest.raises(ConfigError, match="applies to variant 'cvpr2021' only"):
        moss.MOSSConfig(variant="stochastic", delta=8)
    assert mspfn.MSPFNConfig.from_dict({"urabs": "3"}).urabs == 3  # YAML text coerced to the field's type
    assert moss.MOSSConfig(variant="stochastic").num_layers == 20 and moss.MOSSConfig().num_layers == 4


@pytest.mark.parametrize("name", list(PEERS))
def test_kit_weights_round_trip_strictly(name, tmp_path):
    _, cls, cfg, load = PEERS[name]
    model = _small(name)
    path = export_safetensors(model, tmp_path / f"{name}.safetensors", {"model": name})
    fresh = cls(cfg.from_dict({"preset": "small"}))
    load(fresh, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    other = cls(cfg.from_dict({"preset": "small", **({"variant": "stochastic", "preset": "stochastic-small"}
                                                       if name == "moss" else {})}))
    if name != "moss":
        other = cls(cfg.from_dict({"preset": "small", **{"dcsfn": {"units": 1}, "mspfn": {"urabs": 1},
                                                         "rcdnet": {"stages": 3}, "dualgcn": {"depth": 1}}[name]}))
    with pytest.raises(CheckpointError, match=f"{name}.safetensors: does not fit"):
        load(other, path)


def test_mspfn_tf_same_transposed_conv_is_the_adjoint_of_the_strided_conv():
    # conv2d_transpose to size n is the gradient of a 'SAME' stride-2 conv of an n-sized input, odd n included
    conv, deconv = mspfn.TFConv(5, 4), mspfn.TFDeconv(4, 5, stride=2, act=False)
    deconv.weight.data.copy_(conv.weight.data)
    for n in (8, 9, 13):
        x = torch.randn(1, 5, n, n + 1)
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, _tf_pad(n + 1) + _tf_pad(n)), conv.weight, stride=2)
        g = torch.randn_like(y)
        torch.testing.assert_close((y * g).sum(), (deconv(g, (n, n + 1)) * x).sum(), rtol=1e-4, atol=1e-4)


def _tf_pad(size: int) -> tuple[int, int]:
    total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
    return total // 2, total - total // 2


def test_rcdnet_kernels_and_dense_parameters():
    k = rcdnet.initial_rain_kernels(32, 9)
    assert k.shape == (3, 32, 9, 9)
    torch.testing.assert_close(k.sum(dim=(2, 3)), torch.ones(3, 32))
    assert torch.equal(k[0], k[2])
    support = k[0] > 1e-3  # kernel × row × column
    height, width = support.sum(dim=1).amax(dim=1), support.sum(dim=2).amax(dim=1)
    assert (height > width).all()  # vertical streaks: taller than wide
    model = _small("rcdnet")
    for pname, p in model.named_parameters():  # the official .expand()ed parameters are real tensors here
        assert 0 not in p.stride(), pname
    model(torch.rand(1, 3, 16, 16), return_stages=True).rain_layers[-1].sum().backward()
    before = model.eta_m.detach().clone()
    torch.optim.Adam([model.eta_m], lr=0.1).step()  # modern Adam updates it in place, element by element
    assert not torch.equal(before, model.eta_m.detach())


def test_moss_memory_semantics():
    model = _small("moss")
    mem = model.net.memory
    before = mem.units.detach().clone()
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        a = model(x)
    assert torch.equal(mem.units, before)  # eval reads the batch-updated items but does not store them
    model.train()
    model(x)
    assert not torch.equal(mem.units, before) and not mem.units.requires_grad
    resize = moss.MOSS(moss.MOSSConfig.from_dict({"preset": "small", "odd_size": "resize"})).eval()
    with torch.no_grad():
        assert resize(torch.rand(1, 3, 13, 18)).shape == (1, 3, 13, 18) and a.shape == x.shape
    stoch = _small("moss", preset="stochastic-small").train()
    t0 = float(stoch.net.body[0].mem.cur_t)
    stoch(x)
    assert float(stoch.net.body[0].mem.cur_t) == pytest.approx(t0 * 0.99998)


def test_peer_losses():
    x = torch.rand(2, 3, 12, 12)
    assert float(mspfn_loss(x, x)) == pytest.approx(1e-3 * 1.05, rel=1e-5)  # ε (1 + 0.05) at equality
    assert mspfn_loss(x.bfloat16(), x.bfloat16()).dtype == torch.float32
    d = 0.1  # a constant offset: the pixel term is exact, the Laplacian sees it only at the zero-padded border
    p = x + d
    pix = math.sqrt((2 * d) ** 2 + 1e-6)
    lap = torch.sqrt((laplacian(2 * p - 1) - laplacian(2 * x - 1)) ** 2 + 1e-6).mean()
    assert float(mspfn_loss(p, x)) == pytest.approx(pix + 0.05 * float(lap), rel=1e-5)
    assert float(laplacian(torch.ones(1, 3, 5, 5))[0, :, 2, 2].abs().max()) == 0.0
    s, db, dr = 3, 0.1, 0.2
    rainy, clean = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    stages = rcdnet.RCDNetStages(clean + db, [clean + db] * (s + 1), [rainy - clean + dr] * s)
    want = 255.0 ** 2 * (0.1 * db**2 + s * 0.1 * (db**2 + dr**2) + db**2 + 0.9 * dr**2)
    assert float(rcdnet_stage_loss(stages, rainy, clean)) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="expected 4 backgrounds"):
        rcdnet_stage_loss(rcdnet.RCDNetStages(clean, [clean] * 3, [clean] * 3), rainy, clean)
