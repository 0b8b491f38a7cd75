"""UniRain MoE network (our reconstruction): soft routing mixes every expert with weights summing to 1,
hard routing runs exactly k experts per image (checked with hooks on the experts), gradients reach the
routers and the experts that ran, E = 1 is the dense block, the base preset has the reported 24.4 M
parameters, any input size works, and the router noise is seedable and absent in eval."""
from __future__ import annotations

import pytest
import torch

from derainkit.errors import ConfigError
from derainkit.models.unirain import (HardMoE, RoutingNoise, SoftMoE, UniRain, UniRainConfig, count_parameters,
                                      load_unirain_weights)
from derainkit.models.unirain.blocks import GDFN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(channels=8, blocks=(1, 1, 1, 1), refinement_blocks=1, heads=(1, 1, 2, 2))


def tiny(**kw) -> UniRain:
    torch.manual_seed(0)
    return UniRain(UniRainConfig(**{**TINY, **kw}))


def _expert_hooks(model: UniRain) -> dict[str, list[int]]:
    """Per MoE layer, the batch size each expert saw in the last forward (0: did not run)."""
    seen: dict[str, list[int]] = {}
    for name, layer in model.moe_layers().items():
        seen[name] = [0] * len(layer.experts)
        for e, expert in enumerate(layer.experts):
            def hook(_mod, args, _out, name=name, e=e):
                seen[name][e] += args[0].shape[0]
            expert.register_forward_hook(hook)
    return seen


def test_soft_routing_mixes_every_expert_with_weights_summing_to_one():
    model = tiny(encoder_routing="soft", decoder_routing="soft", experts=4).train()
    seen = _expert_hooks(model)
    x = torch.rand(3, 3, 24, 24)
    model(x, noise=RoutingNoise.from_seeds([1, 2, 3]))
    routing = model.routing()
    assert len(routing) == 6 and all(r.kind == "soft" for r in routing.values())  # 3 encoder + 3 decoder levels
    for name, r in routing.items():
        assert r.weights.shape == (3, 4) and bool(r.ran.all())
        assert torch.allclose(r.weights.sum(dim=1), torch.ones(3), atol=1e-6)
        assert bool((r.weights > 0).all())
        assert seen[name] == [3, 3, 3, 3]  # every expert ran on the whole batch


def test_soft_layer_output_is_the_probability_weighted_sum_of_the_experts():
    torch.manual_seed(1)
    layer = SoftMoE([GDFN(8, 6, False) for _ in range(3)], 8, noise_std=0.3, noise_site="pooled").eval()
    x = torch.randn(2, 8, 10, 12)
    y = layer(x)
    p = layer.last.probs
    manual = sum(p[:, e].view(-1, 1, 1, 1) * layer.experts[e](x) for e in range(3))
    assert torch.allclose(y, manual, atol=1e-6)
    expected = torch.softmax(x.mean(dim=(2, 3)) @ layer.router.proj.weight.T, dim=1)
    assert torch.allclose(p, expected, atol=1e-6)  # R = softmax(W φ(x)) in eval (no noise)


@pytest.mark.parametrize("k", [1, 2])
def test_hard_routing_runs_exactly_k_experts_per_image(k):
    model = tiny(encoder_routing="hard", decoder_routing="hard", experts=4, top_k=k).train()
    seen = _expert_hooks(model)
    b = 5
    model(torch.rand(b, 3, 16, 16), noise=RoutingNoise.from_seeds(range(b)))
    for name, r in model.routing().items():
        assert r.kind == "hard"
        assert r.ran.sum(dim=1).tolist() == [k] * b
        assert seen[name] == r.ran.sum(dim=0).tolist()  # an expert ran on exactly the images that chose it
        assert sum(seen[name]) == k * b
        top = r.probs.topk(k, dim=1).indices
        assert torch.equal(r.ran, torch.zeros_like(r.ran).scatter(1, top, True))  # the k most probable
        # kept probabilities as they are (no renormalisation), zero elsewhere
        assert torch.equal(r.weights, torch.where(r.ran, r.probs, torch.zeros_like(r.probs)))


def test_hard_routing_can_renormalise_and_the_default_asymmetric_layout():
    model = tiny(experts=3, top_k=2, renormalize=True).train()
    model(torch.rand(2, 3, 16, 16), noise=RoutingNoise.seeded(0))
    kinds = {name.split(".")[0]: r.kind for name, r in model.routing().items()}
    assert kinds == {"enc1": "soft", "enc2": "soft", "enc3": "soft", "dec3": "hard", "dec2": "hard", "dec1": "hard"}
    for r in model.routing().values():
        if r.kind == "hard":
            assert torch.allclose(r.weights.sum(dim=1), torch.ones(2), atol=1e-6)
    assert not model.routing().get("latent.blocks.0.ffn")  # latent and refinement are dense
    assert not any(isinstance(m, (SoftMoE, HardMoE)) for m in tiny(encoder_routing="dense", decoder_routing="dense").modules())


def test_gradients_reach_routers_and_the_experts_that_ran():
    model = tiny(experts=3, top_k=1).train()
    x = torch.rand(2, 3, 16, 16)
    y = model(x, noise=RoutingNoise.from_seeds([5, 6]))
    (y - x.flip(-1)).abs().mean().backward()
    routing = model.routing()
    for name, layer in model.moe_layers().items():
        g = layer.router.proj.weight.grad
        assert g is not None and float(g.abs().sum()) > 0, name
        for e, expert in enumerate(layer.experts):
            grads = [p.grad for p in expert.parameters()]
            if bool(routing[name].ran[:, e].any()):
                assert all(gr is not None and float(gr.abs().sum()) > 0 for gr in grads), (name, e)
            else:  # an expert no image chose took no part in the step
                assert all(gr is None for gr in grads), (name, e)


def test_renormalised_top1_gives_the_router_no_gradient():
    torch.manual_seed(0)
    model = tiny(experts=3, top_k=1, renormalize=True, encoder_routing="dense").train()
    x = torch.rand(2, 3, 16, 16)
    (model(x, noise=RoutingNoise.seeded(1)) - x).abs().mean().backward()
    for layer in model.moe_layers().values():
        g = layer.router.proj.weight.grad
        # p / p is 1: its gradient is zero up to rounding (~1e-13 in float32 sums), not a learning signal
        assert g is None or float(g.abs().max()) < 1e-9


@pytest.mark.parametrize("training", [False, True])
def test_one_expert_is_the_dense_block(training):
    dense = tiny(encoder_routing="dense", decoder_routing="dense", experts=1)
    moe = tiny(encoder_routing="soft", decoder_routing="hard", experts=1)
    state = moe.state_dict()
    for key, value in dense.state_dict().items():
        moe_key = key.replace(".ffn.", ".ffn.experts.0.") if key not in state else key
        state[moe_key] = value.clone()
    moe.load_state_dict(state)
    dense.train(training)
    moe.train(training)
    x = torch.rand(2, 3, 20, 28)
    assert torch.equal(dense(x), moe(x, noise=RoutingNoise.seeded(3)))
    assert all(torch.equal(r.weights, torch.ones(2, 1)) for r in moe.routing().values())


def test_base_preset_has_the_reported_parameter_count():
    with torch.device("meta"):
        base = UniRain(UniRainConfig())
        restormer_like = UniRain(UniRainConfig(ffn_expansion=2.66, encoder_routing="dense", decoder_routing="dense"))
    n = count_parameters(base)
    assert abs(n - 24.4e6) / 24.4e6 < 0.02, n
    assert 26.0e6 < count_parameters(restormer_like) < 26.3e6  # the backbone is Restormer-sized (26.13 M)
    with torch.device("meta"):
        small = UniRain(UniRainConfig.preset("small"))
    assert count_parameters(small) < 1.0e6


def test_any_size_in_same_size_out_and_eval_is_deterministic_without_touching_the_rng():
    model = tiny().eval()
    for h, w in ((17, 33), (8, 8), (3, 5), (40, 24)):
        x = torch.rand(1, 3, h, w)
        assert model(x).shape == x.shape
    x = torch.rand(2, 3, 19, 21)
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())
    torch.nn.init.zeros_(model.output.weight)  # the global residual: a zero head returns the input
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_router_noise_is_seedable_per_image_and_only_in_training():
    model = tiny(experts=3).train()
    x = torch.rand(2, 3, 16, 16)
    model(x, noise=RoutingNoise.from_seeds([7, 8]))
    first = {k: v.probs.clone() for k, v in model.routing().items()}
    model(x, noise=RoutingNoise.from_seeds([7, 8]))
    assert all(torch.equal(first[k], v.probs) for k, v in model.routing().items())
    model(x, noise=RoutingNoise.from_seeds([9, 8]))
    assert not all(torch.equal(first[k][0], v.probs[0]) for k, v in model.routing().items())
    # an image's noise depends on its own seed only, not on the batch it is in
    model(x[1:], noise=RoutingNoise.from_seeds([8]))
    assert all(torch.allclose(first[k][1], v.probs[0], atol=1e-5) for k, v in model.routing().items())
    model.eval()
    model(x, noise=RoutingNoise.from_seeds([1, 2]))
    clean = {k: v.probs.clone() for k, v in model.routing().items()}
    model(x)
    assert all(torch.equal(clean[k], v.probs) for k, v in model.routing().items())


def test_routing_statistics_per_group():
    from derainkit.models.unirain import routing_statistics

    model = tiny(experts=3, top_k=1).train()
    stats = routing_statistics(model, {"a": [torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24)],
                                       "b": [torch.zeros(1, 3, 16, 16)]})
    assert model.training and set(stats) == {"a", "b"} and len(stats["a"]) == 6
    for layer in stats["a"].values():
        assert sum(layer["mean_weight"]) == pytest.approx(1.0, abs=1e-6) or layer["kind"] == "hard"
        assert sum(layer["ran_fraction"]) == pytest.approx(3.0 if layer["kind"] == "soft" else 1.0)


def test_config_is_strict_and_round_trips(tmp_path):
    with pytest.raises(ConfigError, match="unknown UniRain config key"):
        UniRainConfig.from_dict({"experts": 3, "expert": 2})
    with pytest.raises(ConfigError, match="top_k"):
        UniRainConfig.from_dict({"experts": 2, "top_k": 3})
    with pytest.raises(ConfigError, match="decoder_routing"):
        UniRainConfig.from_dict({"decoder_routing": "sparse"})
    with pytest.raises(ConfigError, match="unknown UniRain preset"):
        UniRainConfig.from_dict({"preset": "huge"})
    small = UniRainConfig.from_dict({"preset": "small", "experts": 4})
    assert small.channels == 16 and small.experts == 4 and small.blocks == (1, 1, 1, 1)
    assert UniRainConfig.from_dict(small.to_dict()) == small
    assert UniRainConfig.from_dict({"blocks": [1, 1, 1, 1], "ffn_expansion": "2"}).ffn_expansion == 2.0
    model = tiny()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    other = load_unirain_weights(tiny(experts=3), tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    from derainkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit"):
        load_unirain_weights(tiny(experts=2), tmp_path / "w.pth")
