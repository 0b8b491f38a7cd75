"""MSGNN structure, ablation switches, gradients and the "graph once per forward" optimisation."""
from __future__ import annotations

import pytest
import torch

from derainkit.errors import InputSizeError
from derainkit.models.msgnn import MSGNN, MSGNNConfig, build_msgnn, count_parameters, export_official_state_dict
from derainkit.models.msgnn.blocks import ECA, GCT, SE, SubNetwork
from derainkit.models.msgnn.graph import EmbeddingCNN, GraphModule, ValueNet, WeightNet


def _img(h: int, w: int, b: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def _has(model: torch.nn.Module, cls: type) -> bool:
    return any(isinstance(m, cls) for m in model.modules())


# ------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("cfg, expected", [
    (MSGNNConfig(), 2_061_579),                                 # official default (N=4)
    (MSGNNConfig(n_subnets=2), 1_393_227),                      # official N=2
    (MSGNNConfig(exemplar=False), 2_370_345),                   # no guide -> 5x5 fuse (reference note §1.7: 2.37 M)
    (MSGNNConfig(exemplar=False, n_subnets=2), 1_458_281),      # ... N=2 (note: 1.46 M)
    (MSGNNConfig(fusion_kernel=5), 2_651_403),                  # guide with 5x5 fuse (note: 2.65 M)
])
def test_parameter_counts(cfg, expected):
    assert count_parameters(build_msgnn(cfg)) == expected


def test_build_from_dict_and_entry_points():
    m = build_msgnn({"n_subnets": 1, "m_blocks": 1, "channels": 8})
    assert isinstance(m, MSGNN) and m.config.n_subnets == 1
    assert count_parameters(m, trainable_only=True) == count_parameters(m)


# ------------------------------------------------------------------------------------------ shapes
def test_output_shape_equals_input_shape_odd_size():
    m = MSGNN().eval()
    x = _img(33, 47)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_exemplar_of_another_size_and_default_exemplar_is_input():
    m = MSGNN(MSGNNConfig(n_subnets=1, m_blocks=2, channels=8)).eval()
    x = _img(30, 36)
    with torch.no_grad():
        y_other = m(x, _img(41, 27, seed=1))
        y_none = m(x)
        y_self = m(x, x)
    assert y_other.shape == x.shape
    assert torch.equal(y_none, y_self)


@pytest.mark.slow
def test_full_resolution_test_image_321x481():
    m = MSGNN(MSGNNConfig(n_subnets=2, m_blocks=2, channels=16)).eval()
    x = _img(321, 481)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_bad_input_shapes():
    m = MSGNN(MSGNNConfig(n_subnets=1, m_blocks=1, channels=8))
    with pytest.raises(ValueError, match="b×3×H×W"):
        m(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="exemplar"):
        m(_img(32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(InputSizeError, match="fewer than k=7; this config needs at least 25×25 px"):
        MSGNN(MSGNNConfig(n_subnets=1, m_blocks=1, channels=8, k=7)).eval()(_img(12, 12))


# ------------------------------------------------------------------------------------------ ablations
def test_attention_switch():
    assert _has(MSGNN(), GCT) and not _has(MSGNN(), SE)
    se = MSGNN(MSGNNConfig(attention="se"))
    assert _has(se, SE) and not _has(se, GCT) and not _has(se, ECA)
    eca = MSGNN(MSGNNConfig(attention="eca"))
    assert _has(eca, ECA) and not _has(eca, GCT) and not _has(eca, SE)
    assert eca.subnets[0].blocks[0].attn.conv.kernel_size == (3,)  # adaptive ECA kernel for C=32
    none = MSGNN(MSGNNConfig(attention="none"))
    assert all(b.attn is None for s in none.subnets for b in s.blocks)
    for m in (se, eca, none):
        with torch.no_grad():
            assert m.eval()(_img(30, 30)).shape == (1, 3, 30, 30)


def test_fusion_connection_switch():
    on, off = MSGNN(), MSGNN(MSGNNConfig(fusion_connection=False))
    assert all(s.fusion is not None for s in on.subnets)
    assert all(s.fusion is None for s in off.subnets)
    assert count_parameters(on) - count_parameters(off) == 4 * (12 * 32 * 32 + 32)
    # without it, sub-network t+1 does not see sub-network t's block outputs: phi stays None
    sub = off.subnets[0]
    _, phi = sub(torch.rand(1, 32, 8, 8))
    assert phi is None


def test_fusion_connection_is_added_to_every_block_input():
    torch.manual_seed(0)
    sub = SubNetwork(8, 3)
    x, phi = torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0])) for b in sub.blocks]
    with torch.no_grad():
        sub(x, phi)
    for h in hooks:
        h.remove()
    assert torch.allclose(seen[0], x + phi)
    assert len(seen) == 3


def test_graph_switch_removes_every_graph_module():
    m = MSGNN(MSGNNConfig(graph=False))
    assert m.graph is None and m.fuse is None
    for cls in (EmbeddingCNN, ValueNet, WeightNet, GraphModule):
        assert not _has(m, cls)
    with torch.no_grad():
        assert m.eval()(_img(20, 22)).shape == (1, 3, 20, 22)
    assert count_parameters(m) == 896 + 4 * 327_968 + 9_347  # head + sub-networks + out (§1.7)


def test_scales_and_exemplar_switches():
    m = MSGNN(MSGNNConfig(scales=(1,), exemplar=False))
    assert list(m.graph.branches) == ["scale1"]
    assert m.fuse[0].conv1.in_channels == 2 * 32 and m.fuse[0].conv1.kernel_size == (5, 5)  # official guide=False
    m = MSGNN(MSGNNConfig(exemplar=False))
    assert list(m.graph.branches) == ["scale1", "scale2", "scale4"]
    assert m.fuse[0].conv1.in_channels == 4 * 32 and m.fuse[0].conv1.kernel_size == (5, 5)
    m = MSGNN(MSGNNConfig(scales=(2, 4)))
    assert list(m.graph.branches) == ["scale2", "scale4", "exemplar"]
    assert m.fuse[0].conv1.in_channels == 4 * 32 and m.fuse[0].conv1.kernel_size == (1, 1)
    with torch.no_grad():
        res = m.eval().graph_features(_img(30, 30))
    assert len(res) == 3


def test_k_l_s_change_the_search():
    x = _img(36, 30)
    base = dict(n_subnets=1, m_blocks=1, channels=8)
    with torch.no_grad():
        r = MSGNN(MSGNNConfig(**base)).eval().graph_features(x)[0]
        assert r.idx.shape == (1, 12 * 10, 5)
        r = MSGNN(MSGNNConfig(**base, k=3)).eval().graph_features(x)[0]
        assert r.idx.shape == (1, 120, 3)
        r = MSGNN(MSGNNConfig(**base, stride=2)).eval().graph_features(x)[0]
        assert r.idx.shape == (1, 18 * 15, 5)             # 36 -> pad 1 -> 18 rows; 30 -> pad 1 -> 15 cols
        assert r.G.shape == (1, 8, 36, 30)
        x = _img(48, 45)
        r = MSGNN(MSGNNConfig(**base, patch_size=5)).eval().graph_features(x)[0]
        assert r.idx.shape == (1, 16 * 15, 5)             # 48 -> pad 2 -> 16 rows; 45 -> pad 1 -> 15 cols
        m = MSGNN(MSGNNConfig(**base, patch_size=5, stride=3)).eval()
        assert m(x).shape == x.shape


def test_window_rules():
    x = _img(120, 120)  # 40×40 patch grid
    base = dict(n_subnets=1, m_blocks=1, channels=8, scales=(1,), exemplar=False)
    torch.manual_seed(0)
    sd = MSGNN(MSGNNConfig(**base)).state_dict()
    out = {}
    for rule, size in (("global", 30), ("msgnn", 40), ("centered", 40), ("msgnn", 8), ("centered", 8)):
        m = MSGNN(MSGNNConfig(**base, window_rule=rule, window_size=size)).eval()
        m.load_state_dict(sd)
        with torch.no_grad():
            out[rule, size] = m.graph_features(x)[0].idx.sort(-1).values
    # a window as large as the grid is a global search, whatever the rule
    assert torch.equal(out["global", 30], out["msgnn", 40])
    assert torch.equal(out["global", 30], out["centered", 40])
    assert not torch.equal(out["msgnn", 8], out["centered", 8])
    # the centred window surrounds the query's own position; the official one is shifted up-left
    q = torch.arange(40 * 40)
    for rule, pos in (("centered", True), ("msgnn", False)):
        rows, cols = out[rule, 8][0] // 40, out[rule, 8][0] % 40
        near = ((rows - (q // 40)[:, None]).abs() <= 8) & ((cols - (q % 40)[:, None]).abs() <= 8)
        assert bool(near.all()) is pos


# ------------------------------------------------------------------------------------------ gradients
def _no_grad_names(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    return {n for n, p in model.named_parameters() if p.grad is None}


def test_code_variant_gradients_match_the_official_code():
    torch.manual_seed(0)
    m = MSGNN()
    dead = _no_grad_names(m, _img(30, 30, b=2))
    expected = set()
    for n, _ in m.named_parameters():
        if (".embed_db." in n or ".embed_query." in n or ".unused_" in n or n.startswith("fuse.3.")
                or n.startswith(("subnets.0.dense.11.", "subnets.1.dense.11.", "subnets.2.dense.11.",
                                 "subnets.3.dense.11."))):
            expected.add(n)
    params = dict(m.named_parameters())
    # The reference note's list (§1.7): 404,036 parameters never get a gradient.
    assert sum(params[n].numel() for n in expected) == 404_036
    # The last sub-network's fusion connection is computed and discarded too (its Φ feeds nothing),
    # which the note's list misses: 12,320 more.
    also_dead = {"subnets.3.fusion.weight", "subnets.3.fusion.bias"}
    assert dead == expected | also_dead
    assert sum(params[n].numel() for n in also_dead) == 12_320
    for n, p in params.items():
        if n not in dead:
            assert torch.isfinite(p.grad).all(), n


def test_paper_variant_trains_the_shared_embedding():
    torch.manual_seed(0)
    m = MSGNN(MSGNNConfig(variant="paper", n_subnets=2, m_blocks=2))
    assert m.graph.shared_embed is not None
    assert not any(".embed_db." in n or ".embed_query." in n or ".unused_" in n or ".values." in n
                   for n, _ in m.named_parameters())
    assert m.fuse[0].conv1.kernel_size == (5, 5) and len(m.fuse) == 1
    assert len(m.subnets[0].dense) == 1 and m.subnets[1].fusion is None  # dead modules not built
    dead = _no_grad_names(m, _img(30, 30, b=2))
    assert dead == set()
    for conv in m.graph.shared_embed.convs:
        assert conv.weight.grad.abs().sum() > 0


def test_paper_variant_self_neighbour_and_signed_edges():
    torch.manual_seed(0)
    m = MSGNN(MSGNNConfig(variant="paper", n_subnets=1, m_blocks=1, channels=8)).eval()
    with torch.no_grad():
        res = m.graph_features(_img(30, 27))
    r1 = res[0]
    m_q = r1.idx.shape[1]
    assert torch.equal(r1.idx[0, :, 0], torch.arange(m_q))             # the query is neighbour 0
    assert (r1.idx[0, :, 1:] != torch.arange(m_q)[:, None]).all()      # and only once
    assert torch.allclose(r1.dist[0, :, 0], torch.full((m_q,), 1e-5))
    assert not (res[1].idx[0, :, 0] == torch.arange(m_q) % res[1].idx.max()).all()  # other branches: searched


def test_variant_overrides_mix():
    m = MSGNN(MSGNNConfig(variant="code", train_embedding=True))
    dead = _no_grad_names(m, _img(30, 30))
    assert not any(".embed_db." in n for n in dead)  # gradients reach the embeddings through the L1 edges


# ------------------------------------------------------------------------------------------ graph once
def test_graph_features_independent_of_backbone_and_reusable():
    torch.manual_seed(0)
    m = MSGNN(MSGNNConfig(n_subnets=2, m_blocks=2)).eval()
    x = _img(27, 33)
    with torch.no_grad():
        g1 = [r.G for r in m.graph_features(x)]
        for p in m.subnets.parameters():
            p.add_(0.1)  # the backbone changes, the graph features must not
        g2 = [r.G for r in m.graph_features(x)]
        y1 = m(x)
        y2 = m(x, graph_features=g2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    assert torch.equal(y1, y2)


def test_once_per_forward_equals_literal_per_subnetwork_recomputation():
    """Our model computes G once; the literal port of the official code recomputes it in every
    sub-network iteration with the expanded gather. Same weights -> same G in every iteration,
    same output, same gradients. Also covers the overlapping-patch path (s < l) and k != 5."""
    literal = pytest.importorskip("bench.msgnn_literal")
    for kw in (dict(), dict(stride=2), dict(patch_size=5, k=3)):  # l=5 needs O¼ >= 12 px for 9 candidates
        torch.manual_seed(1)
        ours = MSGNN(MSGNNConfig(n_subnets=2, m_blocks=2, channels=8, **kw)).train()
        lit = literal.LiteralMSGNN(n_subnets=2, unit_num=2, c=8, k=kw.get("k", 5), l=kw.get("patch_size", 3),
                                   s=kw.get("stride", 3)).train()
        lit.load_state_dict(export_official_state_dict(ours))
        x, e = _img(48, 51, b=2), _img(45, 36, b=2, seed=3)
        half, quarter = ours.prepare_inputs(x)[1:3]
        res = ours.graph_features(x, e)
        y = ours.backbone(x, [r.G for r in res])
        y_lit = lit(x, half, quarter, e)
        assert (y - y_lit).abs().max().item() <= 1e-5, kw
        for it in lit.G_per_iteration:
            for r, g in zip(res, it):
                assert (r.G - g).abs().max().item() <= 1e-5, kw
        y.square().mean().backward()
        y_lit.square().mean().backward()
        theirs = dict(lit.named_parameters())
        from derainkit.models.msgnn import ours_to_official
        for n, p in ours.named_parameters():
            q = theirs[ours_to_official(n)]
            if p.grad is None:
                assert q.grad is None or q.grad.abs().max() == 0, n
            else:
                assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6), n


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_chunked_inference_path_equals_autograd_path(variant):
    """Inference aggregates queries in chunks and uses in-place buffers; training uses plain autograd
    ops. Both must give the same graph features and output."""
    base = dict(variant=variant, n_subnets=2, m_blocks=2, channels=8)
    torch.manual_seed(0)
    m1 = MSGNN(MSGNNConfig(**base))
    m2 = MSGNN(MSGNNConfig(**base, query_chunk=7))
    m2.load_state_dict(m1.state_dict())
    x, e = _img(31, 38), _img(29, 33, seed=2)
    with torch.no_grad():
        r2 = m2.graph_features(x, e)
        y2 = m2(x, e)
    r1 = m1.graph_features(x, e)
    y1 = m1(x, e)
    for a, b in zip(r1, r2):
        assert (a.G.detach() - b.G).abs().max().item() <= 1e-6
        assert torch.equal(a.idx, b.idx)
    assert (y1.detach() - y2).abs().max().item() <= 1e-5


def test_paper_variant_with_overlapping_patches():
    # N=2: graph features enter between sub-networks, so with N=1 they would feed nothing
    m = MSGNN(MSGNNConfig(variant="paper", n_subnets=2, m_blocks=1, channels=8, stride=2)).eval()
    x = _img(31, 38)
    with torch.no_grad():
        assert m(x).shape == x.shape
    y = m.train()(x)
    y.mean().backward()
    assert m.graph.shared_embed.convs[0].weight.grad.abs().sum() > 0
