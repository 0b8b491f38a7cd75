"""The asymmetric layer contrastive loss (our reconstruction of NLCL's TPAMI extension)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.losses.nlcl import NLCLLossConfig, asymmetric_supcon_loss, supcon_loss


def _z(b: int, n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_equal_temperatures_and_size_weights_give_the_symmetric_loss():
    zb, zr = _z(2, 8, seed=1), _z(2, 128, seed=2)
    sym = supcon_loss(zb, zr, 0.07)
    asym = asymmetric_supcon_loss(zb, zr, 0.07, 0.07, 8 / 136, 128 / 136)
    torch.testing.assert_close(asym, sym, rtol=1e-5, atol=1e-6)


def test_class_temperatures_act_on_their_own_anchors():
    zb, zr = _z(1, 8, seed=3), _z(1, 32, seed=4)
    base = asymmetric_supcon_loss(zb, zr, 0.1, 0.1, 1.0, 0.0)  # background anchors only
    assert torch.equal(base, asymmetric_supcon_loss(zb, zr, 0.1, 0.5, 1.0, 0.0))  # rain τ does not touch them
    assert not torch.equal(base, asymmetric_supcon_loss(zb, zr, 0.5, 0.1, 1.0, 0.0))
    g = zb.clone().requires_grad_(True)
    asymmetric_supcon_loss(g, zr, 0.2, 0.05).backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_temperatures_from_the_measured_intrinsic_dimension_ratio():
    cfg = NLCLLossConfig.from_dict({"contrast": "asymmetric", "id_ratio": 4.0})
    tb, tr = cfg.layer_temperatures()
    assert tb == pytest.approx(0.14) and tr == pytest.approx(0.035) and tb * tr == pytest.approx(0.07 ** 2)
    assert NLCLLossConfig().layer_temperatures() == (0.07, 0.07)
    assert NLCLLossConfig.from_dict({"contrast": "asymmetric", "tau_rain": 0.02}).layer_temperatures() == (0.07, 0.02)
    with pytest.raises(ConfigError, match="contrast"):
        NLCLLossConfig.from_dict({"contrast": "lopsided"})
    with pytest.raises(ConfigError, match="id_ratio"):
        NLCLLossConfig.from_dict({"contrast": "asymmetric", "id_ratio": -1})
