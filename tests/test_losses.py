"""Losses by name: values against the metric definitions, gradients, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from derainkit.errors import ConfigError
from derainkit.losses import LOSSES, ModelLoss, get_loss
from derainkit.metrics.protocols import psnr, ssim_zero_padded


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 24, 20, generator=g)
    pred = (target + 0.05 * torch.randn(2, 3, 24, 20, generator=g)).clamp(0, 1)
    return pred, target


def test_names_and_default_recipe_loss():
    assert set(LOSSES) == {"ssim", "l1", "mse", "psnr",  # the kit's own
                           "spanet", "spanet_mse_ssim", "spanet_l1_ssim", "drn_stagewise_ssim", "rescan_stagewise_mse",
                           "mspfn", "rcdnet_stages"}  # the Table 1 peers' own losses
    pred, target = _pair()
    # The MSGNN loss is -SSIM with the zero-padded Gaussian window of the official code.
    assert torch.allclose(get_loss("ssim")(pred, target), -ssim_zero_padded(pred, target))
    assert get_loss("ssim")(target, target).item() == pytest.approx(-1.0, abs=1e-6)


def test_values_match_definitions():
    pred, target = _pair(1)
    assert get_loss("l1")(pred, target).item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)
    mse = ((pred - target) ** 2).mean().item()
    assert get_loss("mse")(pred, target).item() == pytest.approx(mse, rel=1e-6)
    expected = -psnr(pred.double().numpy(), target.double().numpy(), 1.0)
    assert get_loss("psnr")(pred, target).item() == pytest.approx(expected, abs=1e-3)
    assert math.isfinite(get_loss("psnr")(target, target).item())  # exact prediction: finite, very low


IMAGE_LOSSES = sorted(n for n, f in LOSSES.items() if not isinstance(f, ModelLoss))  # (pred, target) -> loss


@pytest.mark.parametrize("name", IMAGE_LOSSES)
def test_gradients_and_lower_is_better(name):
    pred, target = _pair(2)
    worse = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    fn = get_loss(name)
    p = pred.clone().requires_grad_(True)
    loss = fn(p, target)
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert fn(pred, target).item() < fn(worse, target).item()


@pytest.mark.parametrize("name", IMAGE_LOSSES)
def test_bf16_prediction_is_scored_in_fp32(name):
    pred, target = _pair(3)
    loss = get_loss(name)(pred.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert np.isclose(loss.item(), get_loss(name)(pred.bfloat16().float(), target).item())


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown loss 'ssmi'.*ssim, l1, mse, psnr"):
        get_loss("ssmi")


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="differ in shape"):
        get_loss("l1")(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_model_losses_ask_the_model_for_stages_or_attention():
    from derainkit.losses import ModelLoss
    from derainkit.losses.peers import drn_loss

    staged = get_loss("drn_stagewise_ssim")
    assert isinstance(staged, ModelLoss) and staged.forward_kwargs == {"return_stages": True}
    pred, target = _pair()
    assert torch.equal(staged([pred, target], target), drn_loss([pred, target], target))
    spanet = get_loss("spanet")
    assert spanet.forward_kwargs == {"return_attention": True} and spanet.needs_rainy
    attention = torch.zeros(pred.shape[0], 1, *pred.shape[2:])
    assert torch.isfinite(spanet((pred, attention), target, pred))
