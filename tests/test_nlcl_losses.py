"""NLCL losses without ../shared: the strict config, each term against a direct reference formula,
the faithful/fixed differences, batching, gradient routing and the official anchor order."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.losses.nlcl import (
    NLCLLossConfig,
    discriminator_losses,
    generator_losses,
    l2_normalize,
    nlcl_forward,
    nlcl_objective,
    patch_nce,
    supcon_loss,
)
from derainkit.losses.nonlocal_sampling import FixedAnchors, PythonRandomAnchors, SeededAnchors
from derainkit.models.nlcl import NLCLConfig, build_nlcl_nets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = NLCLConfig(channels=8, res_blocks=2, disc_channels=8, head_channels=16)
GEN_LAYERS = (0, 1, 2)


def _setup(faithful: bool, batch: int = 2, size: int = 64, seed: int = 0):
    cfg = NLCLLossConfig(faithful=faithful, gen_layers=GEN_LAYERS, num_patches=32, num_pos=4, num_neg=16)
    nets = build_nlcl_nets(TINY, gen_layers=GEN_LAYERS, faithful=faithful, seed=seed)
    g = torch.Generator().manual_seed(seed)
    rainy = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    clean = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return cfg, nets, rainy, clean


def test_loss_config_defaults_are_the_official_options_and_strict():
    cfg = NLCLLossConfig()
    assert (cfg.lambda_gan, cfg.lambda_nce, cfg.lambda_dis, cfg.lambda_mse, cfg.lambda_l1) == (1, 1, 1, 1, 0.1)
    assert (cfg.tau, cfg.num_patches, cfg.num_pos, cfg.num_neg) == (0.07, 256, 8, 128)
    assert cfg.gen_layers == (0, 2, 4, 8, 12) and cfg.adv_layers == (0, 3, 7, 11) and cfg.nce_idt
    assert not cfg.faithful
    round_trip = NLCLLossConfig.from_dict(NLCLLossConfig(faithful=True, gen_layers=(0, 4)).to_dict())
    assert round_trip.gen_layers == (0, 4) and round_trip.faithful
    with pytest.raises(ConfigError, match=r"unknown NLCL loss config key\(s\) \['temperature'\]; valid keys"):
        NLCLLossConfig.from_dict({"temperature": 0.1})
    for bad in ({"tau": 0}, {"num_pos": 1}, {"adv_layers": [3, 0]}, {"patch_size": 15}, {"lambda_l1": -1}):
        with pytest.raises(ConfigError):
            NLCLLossConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="must be a list of integers"):
        NLCLLossConfig.from_dict({"gen_layers": "0,2"})


def test_supcon_matches_the_per_anchor_formula():
    g = torch.Generator().manual_seed(0)
    zb = l2_normalize(torch.randn(2, 3, 5, generator=g), False)
    zr = l2_normalize(torch.randn(2, 6, 5, generator=g), False)
    tau = 0.5
    got = supcon_loss(zb, zr, tau)
    for b in range(2):
        z = torch.cat([zb[b], zr[b]])
        labels = [1] * 3 + [0] * 6
        total = 0.0
        for i in range(9):
            denom = sum(torch.exp(z[i] @ z[a] / tau) for a in range(9) if a != i)
            pos = [p for p in range(9) if p != i and labels[p] == labels[i]]
            total += -sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in pos) / len(pos)
        torch.testing.assert_close(got[b], total / 9)


@pytest.mark.parametrize("faithful", [True, False])
def test_patch_nce_matches_cross_entropy_over_positive_and_negatives(faithful):
    g = torch.Generator().manual_seed(1)
    q = l2_normalize(torch.randn(2, 5, 4, generator=g), False)
    k = l2_normalize(torch.randn(2, 5, 4, generator=g), False)
    got = patch_nce(q, k, 0.07, faithful)
    for b in range(2):
        for i in range(5):
            negs = [q[b, i] @ k[b, j] if j != i else torch.tensor(-10.0) for j in range(5)]
            if not faithful:
                negs = [n for j, n in enumerate(negs) if j != i]
            logits = torch.stack([q[b, i] @ k[b, i]] + negs) / 0.07
            torch.testing.assert_close(got[b, i], -torch.log_softmax(logits, 0)[0])


def test_normalisation_epsilon_quirk():
    tiny = torch.full((1, 4), 2.5e-8)  # norm 5e-8, the scale of the official heads' outputs at init (Q7)
    assert l2_normalize(tiny, faithful=True).norm().item() == pytest.approx(5e-8 / (5e-8 + 1e-7), rel=1e-5)
    assert l2_normalize(tiny, faithful=False).norm().item() == pytest.approx(1.0, rel=1e-6)
    unit = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(l2_normalize(unit, True), l2_normalize(unit, False), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("faithful", [True, False])
def test_objective_terms_and_gradient_routing(faithful):
    cfg, nets, rainy, clean = _setup(faithful)
    nets.disc.requires_grad_(False)  # the G step: D frozen, gradients still pass through it
    fwd, terms = nlcl_objective(nets, rainy, clean, SeededAnchors(0), cfg, per_layer=True)
    expected = {"G_GAN", "NCE", "NCE_Y", "NCE_both", "DisNCE", "MSE", "L1", "G", "D_fake", "D_real", "D"}
    assert expected <= set(terms) and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert len([k for k in terms if k.startswith("DisNCE/")]) == 4 and "NCE_Y/2" in terms
    assert ("DisNCE/rgb" in terms) == faithful
    parts = terms["G_GAN"] + 0.5 * (terms["NCE"] + terms["NCE_Y"]) + terms["DisNCE"] + terms["MSE"] + terms["L1"]
    torch.testing.assert_close(terms["G"], parts)
    torch.testing.assert_close(terms["D"], 0.5 * (terms["D_fake"] + terms["D_real"]))
    sparsity = F.l1_loss(rainy, fwd.background) if faithful else fwd.rain.abs().mean()
    torch.testing.assert_close(terms["L1"], 0.1 * sparsity)
    torch.testing.assert_close(terms["MSE"], F.mse_loss(fwd.background + fwd.rain, rainy))
    terms["G"].backward()
    for name in ("background", "rain", "gen_head", "adv_back_head", "adv_rain_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(nets, name).parameters()), name
    assert all(p.grad is None for p in nets.disc.parameters())
    nets.zero_grad(set_to_none=True)
    nets.disc.requires_grad_(True)
    discriminator_losses(nets, nlcl_forward(nets, rainy, clean, cfg))["D"].backward()
    assert all(p.grad is not None for p in nets.disc.parameters())
    assert all(p.grad is None for p in nets.background.parameters())  # B̂ is detached in the D step


def test_faithful_and_fixed_differ_only_where_documented():
    def both(size: int) -> tuple[dict, dict]:
        cfg_f, nets_f, rainy, clean = _setup(True, batch=1, size=size)
        cfg_x, nets_x, _, _ = _setup(False, batch=1, size=size)
        anchors = FixedAnchors({"loc": [[30, 30]], "loc_idt": [[20, 40]], "pos": [[40, 25]], "neg": [[33, 33]]})
        with torch.no_grad():
            return (nlcl_objective(nets_f, rainy, clean, anchors, cfg_f)[1],
                    nlcl_objective(nets_x, rainy, clean, anchors, cfg_x)[1])

    f, x = both(256)  # the official crop size: the position mapping (Q3) agrees
    for same in ("G_GAN", "MSE", "D_fake", "D_real"):
        torch.testing.assert_close(f[same], x[same])
    # Q5a (−10 vs an excluded diagonal) has no effect in float32 at unit norm, Q7 little on G_B features
    torch.testing.assert_close(f["NCE"], x["NCE"], rtol=1e-3, atol=0)
    assert abs(f["DisNCE"] - x["DisNCE"]) > 1e-3  # Q1, Q2 (other features, other heads), Q7
    assert abs(f["L1"] - x["L1"]) > 1e-4  # Q5b: L1(O, B̂) vs |R̂|
    f, x = both(64)  # a 64-px crop: the official ⌊y·H_l/256⌋ puts G_B's centres at y/4 (Q3)
    assert abs(f["NCE"] - x["NCE"]) > 1e-2


@pytest.mark.parametrize("faithful", [True, False])
def test_a_batch_is_the_mean_of_its_images(faithful):
    """Batch 2 equals two batch-1 passes with the same anchors: means of the per-image terms, except the
    faithful LayerNCE, which the official code sums over the batch."""
    cfg, nets, rainy, clean = _setup(faithful, batch=2)
    anchors = {"loc": [[30, 30], [40, 20]], "loc_idt": [[20, 40], [48, 48]], "pos": [[40, 25], [16, 16]],
               "neg": [[33, 33], [16, 48]]}
    with torch.no_grad():
        _, both = nlcl_objective(nets, rainy, clean, FixedAnchors(anchors), cfg)
        singles = [nlcl_objective(nets, rainy[i:i + 1], clean[i:i + 1],
                                  FixedAnchors({k: [v[i]] for k, v in anchors.items()}), cfg)[1] for i in range(2)]
    for key in ("G_GAN", "NCE", "NCE_Y", "MSE", "L1", "D"):
        torch.testing.assert_close(both[key], (singles[0][key] + singles[1][key]) / 2, rtol=2e-5, atol=1e-7)
    combine = 1.0 if faithful else 0.5
    torch.testing.assert_close(both["DisNCE"], combine * (singles[0]["DisNCE"] + singles[1]["DisNCE"]),
                               rtol=2e-5, atol=1e-7)


def test_python_random_anchors_are_drawn_in_the_official_order():
    cfg, nets, rainy, clean = _setup(True, batch=1)
    record: dict = {}
    random.seed(3)
    with torch.no_grad():
        fwd = nlcl_forward(nets, rainy, clean, cfg)
        generator_losses(nets, fwd, PythonRandomAnchors(), cfg, record=record)
    random.seed(3)
    expected = [[random.randint(16, 48), random.randint(16, 48)] for _ in range(4)]
    assert [record[n].anchors[0].tolist() for n in ("loc", "loc_idt", "pos", "neg")] == expected
    assert record["pos"].ids.shape == (1, 4, 2) and record["neg"].ids.shape == (1, 16, 2)
    assert record["loc_per_position"].shape == (3, 1, 32)
