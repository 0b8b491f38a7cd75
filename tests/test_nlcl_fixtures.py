"""Acceptance: the kit's NLCL in faithful mode reproduces the official code's loss pass
(``../shared/fixtures/nlcl/losses_256.pt``): every loss term, the totals, the per-layer values, the sampled
patches, the generator outputs, the per-term gradients w.r.t. B̂ and R̂ and the parameter gradients.

The official networks come from ``nets_state_dict.pt`` (the Adv samplers' ``mlp_4``, whose output the
official loss discards, is omitted there); the anchors come from ``random.seed(0)`` in the official draw
order, exactly as the fixture was made. Tolerances are the fixture README's (losses rtol 1e-5, crops atol
1e-5, gradient norms rtol 1e-4), with one measured exception explained at ``NETBACK_RTOL``.
"""
from __future__ import annotations

import random

import pytest
import torch

from derainkit.losses.nlcl import NLCLLossConfig, discriminator_losses, nlcl_objective
from derainkit.losses.nonlocal_sampling import PythonRandomAnchors, layer_positions
from derainkit.models.nlcl import build_nlcl_nets, load_official_nets

pytestmark = pytest.mark.slow  # one full 256² G and D pass with gradients: ~30 s on a shared 2-core CPU

LOSS_RTOL, CROP_ATOL, GRAD_RTOL = 1e-5, 1e-5, 1e-4
# netBack's parameter-gradient norm is a small difference of large parts (its NCE and NCE_Y parts alone have
# norms 48 and 84) and float32 rounding moves it by ~1e-4: the same graph in float64 gives 52.1781, 1.08e-4
# above the recorded 52.1725, kit float32 gives 52.1785 (1.14e-4), kit float32 channels-last 52.1732 (1.4e-5).
NETBACK_RTOL = 2.5e-4
TERMS = {"G_GAN": "loss_G_GAN", "NCE": "loss_NCE", "NCE_Y": "loss_NCE_Y", "NCE_both": "loss_NCE_both",
         "DisNCE": "loss_DisNCE", "MSE": "loss_MSE", "L1": "loss_L1", "G": "loss_G", "D": "loss_D",
         "D_fake": "loss_D_fake", "D_real": "loss_D_real"}
SAMPLERS = {"loc": "loc_O", "loc_idt": "loc_idt_B_real", "pos": "dis_pos_B_hat", "neg": "dis_neg_R_hat"}
CROPS = {"tl": (slice(0, 24), slice(0, 24)), "br": (slice(232, 256), slice(232, 256)),
         "grid16": (slice(8, None, 16), slice(8, None, 16))}


def _norm(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else t.double().norm().item()


def _param_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.double().pow(2).sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) ** 0.5 if grads else 0.0


@pytest.fixture(scope="module")
def official(request):
    from conftest import shared_path

    fx = shared_path("fixtures", "nlcl")
    ref = torch.load(fx / "losses_256.pt", weights_only=True)
    states = torch.load(fx / "nets_state_dict.pt", weights_only=True)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # the gather's backward over duplicate positions (Q3) accumulates in parallel otherwise (README)
    torch.use_deterministic_algorithms(True)
    try:
        nets = load_official_nets(build_nlcl_nets(faithful=True), states)
        nets.disc.requires_grad_(False)  # the official G step
        cfg = NLCLLossConfig(faithful=True)
        record: dict = {}
        state = random.getstate()
        random.seed(0)
        try:
            fwd, terms = nlcl_objective(nets, ref["O"], ref["B_real"], PythonRandomAnchors(), cfg,
                                        per_layer=True, record=record)
        finally:
            random.setstate(state)
        inputs = [fwd.background, fwd.rain]
        per_term = {name: torch.autograd.grad(terms[name], inputs, retain_graph=True, allow_unused=True)
                    for name in ("G_GAN", "NCE_both", "DisNCE", "MSE", "L1")}
        # G is the sum of these terms, so its gradient is the sum of theirs (one backward fewer)
        total = [sum(g[j] for g in per_term.values() if g[j] is not None) for j in range(2)]
        terms["G"].backward(retain_graph=True)
        params = {name: _param_norm(nets.official_module(name))
                  for name in ("netBack", "netRain", "netGenSample", "netD")}
        for official_name, heads in (("netAdvBackSample", nets.adv_back_head), ("netAdvRainSample", nets.adv_rain_head),
                                     ("netGenSample", nets.gen_head)):
            params.update({f"{official_name}.mlp_{i}": _param_norm(heads.mlp(i)) for i in range(len(heads))})
        nets.zero_grad(set_to_none=True)
        nets.disc.requires_grad_(True)
        discriminator_losses(nets, fwd)["D"].backward()
        params["D_step"] = _param_norm(nets.disc)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return {"ref": ref, "fwd": fwd, "terms": terms, "record": record, "per_term": per_term, "total": total,
            "params": params}


def test_every_loss_term_and_total(official):
    ref, terms = official["ref"], official["terms"]
    for kit, off in TERMS.items():
        torch.testing.assert_close(terms[kit].detach(), ref[off], rtol=LOSS_RTOL, atol=0, msg=kit)


def test_per_layer_and_per_position_values(official):
    ref, terms, record = official["ref"], official["terms"], official["record"]
    for kit, off, names in (("NCE", "loss_NCE_per_layer", [0, 2, 4, 8, 12]),
                            ("NCE_Y", "loss_NCE_Y_per_layer", [0, 2, 4, 8, 12]),
                            ("DisNCE", "loss_DisNCE_per_layer", ["rgb", 0, 3, 7])):
        got = torch.stack([terms[f"{kit}/{n}"].detach() for n in names])
        torch.testing.assert_close(got, ref[off], rtol=LOSS_RTOL, atol=0, msg=kit)
    # per-position losses as multisets per layer (the loss does not depend on the order of the sample)
    for name, off in (("loc", "loss_NCE_per_position"), ("loc_idt", "loss_NCE_Y_per_position")):
        got = record[f"{name}_per_position"][:, 0]
        torch.testing.assert_close(got.sort(1).values, ref[off].sort(1).values, rtol=1e-4, atol=1e-5)


def test_sampled_anchors_and_patch_sets(official):
    ref, record = official["ref"], official["record"]
    for kit, off in SAMPLERS.items():
        rec, sample = ref["samplers"][off], record[kit]
        assert sample.anchors[0].tolist() == rec["anchor"].tolist()
        assert sample.window[0].tolist() == rec["window"].tolist()
        assert set(map(tuple, sample.ids[0].tolist())) == set(map(tuple, rec["ids"].tolist()))
        torch.testing.assert_close(sample.dist[0].sort().values, rec["dist"].sort().values, atol=1e-5, rtol=1e-5)
        for flat_ref, hw in zip(rec.get("layer_flat_index", []), rec.get("layer_hw", [])):
            flat = layer_positions(sample.ids, (256, 256), tuple(hw), faithful=True)[0]
            assert sorted(flat.tolist()) == sorted(flat_ref.tolist())


def test_generator_outputs(official):
    ref, fwd = official["ref"], official["fwd"]
    for out, key in ((fwd.background, "B_hat_crops"), (fwd.rain, "R_hat_crops")):
        for crop, (ys, xs) in CROPS.items():
            torch.testing.assert_close(out.detach()[..., ys, xs], ref[key][crop], atol=CROP_ATOL, rtol=0)
    ys, xs = CROPS["grid16"]
    torch.testing.assert_close(fwd.idt_background.detach()[..., ys, xs], ref["idt_B_crops"]["grid16"],
                               atol=CROP_ATOL, rtol=0)
    for t, key in ((fwd.background, "B_hat_stats"), (fwd.rain, "R_hat_stats")):
        t = t.detach().double()
        assert t.sum().item() == pytest.approx(ref[key]["sum"], rel=1e-5)
        assert t.abs().sum().item() == pytest.approx(ref[key]["abs_sum"], rel=1e-5)


def test_gradient_norms_wrt_background_and_rain(official):
    ref = official["ref"]
    gb, gr = official["total"]
    assert _norm(gb) == pytest.approx(ref["grad_loss_G_wrt_B_hat_norm"], rel=GRAD_RTOL)
    assert _norm(gr) == pytest.approx(ref["grad_loss_G_wrt_R_hat_norm"], rel=GRAD_RTOL)
    for name, (g_b, g_r) in official["per_term"].items():
        expected = ref["grad_per_term"][name]
        assert _norm(g_b) == pytest.approx(expected["B_hat_norm"], rel=GRAD_RTOL), name
        assert _norm(g_r) == pytest.approx(expected["R_hat_norm"], rel=GRAD_RTOL, abs=1e-12), name


def test_parameter_gradient_norms(official):
    ref, params = official["ref"], official["params"]
    expected = ref["param_grad_norms_after_G_backward"]
    for name, value in params.items():
        if name == "D_step":
            assert value == pytest.approx(ref["grad_loss_D_wrt_D_params_norm"], rel=GRAD_RTOL)
            continue
        rtol = NETBACK_RTOL if name == "netBack" else GRAD_RTOL
        assert value == pytest.approx(expected[name], rel=rtol, abs=0.0), name
    assert expected["netD"] == params["netD"] == 0.0  # D frozen in the G step
    # the official mlp_4 heads get exactly zero gradient (Q1), which is why the kit's faithful heads omit them
    assert expected["netAdvBackSample.mlp_4"] == expected["netAdvRainSample.mlp_4"] == 0.0
