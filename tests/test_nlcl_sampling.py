"""NLCL's non-local sampler: the official window rule, exactness against brute force and the literal loop
port, batching, anchor sources, the position mapping (quirk Q3), and the official search results."""
from __future__ import annotations

import random

import pytest
import torch

from bench.nlcl_sampling_literal import literal_nonlocal_topk
from derainkit.losses.nonlocal_sampling import (
    FixedAnchors,
    PythonRandomAnchors,
    SeededAnchors,
    candidate_windows,
    gather_rows,
    layer_positions,
    nonlocal_topk,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids_set(ids: torch.Tensor) -> set:
    return set(map(tuple, ids.tolist()))


def _brute_force(m: torch.Tensor, anchor: tuple[int, int], k: int) -> tuple[set, torch.Tensor]:
    """Every candidate of the official window scored in float64, one patch at a time."""
    h, w = anchor
    (r0, r1, c0, c1), = candidate_windows(torch.tensor([anchor]), m.shape[2], m.shape[3]).tolist()
    a = m[0, :, h - 8:h + 8, w - 8:w + 8].double()
    scored = sorted(((m[0, :, y - 8:y + 8, x - 8:x + 8].double() - a).pow(2).sum().sqrt().item(), (y, x))
                    for y in range(r0, r1) for x in range(c0, c1))
    return {p for _, p in scored[:k]}, torch.tensor([d for d, _ in scored[:k]], dtype=torch.float64)


def test_window_rule_matches_the_official_clamp():
    anchors = torch.tensor([[16, 16], [27, 229], [28, 228], [240, 240], [128, 128]])
    w = candidate_windows(anchors, 256, 256)
    assert w.tolist() == [[8, 36, 8, 36], [8, 47, 209, 248], [8, 48, 208, 248], [220, 248, 220, 248],
                          [108, 148, 108, 148]]
    counts = ((w[:, 1] - w[:, 0]) * (w[:, 3] - w[:, 2])).tolist()
    assert counts == [784, 39 * 39, 1600, 784, 1600]


def test_search_equals_brute_force_and_the_literal_loop_port():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(1, 3, 96, 80, generator=g)
    for anchor, k in (((16, 16), 8), ((50, 40), 128), ((80, 64), 200)):
        s = nonlocal_topk(m, torch.tensor([anchor]), k)
        ref_ids, ref_dist = _brute_force(m, anchor, k)
        assert _ids_set(s.ids[0]) == ref_ids
        torch.testing.assert_close(s.dist[0].double(), ref_dist, atol=1e-6, rtol=1e-6)
        assert tuple(s.ids[0, 0].tolist()) == anchor and s.dist[0, 0] == 0
        lit_ids, lit_dist = literal_nonlocal_topk(m, anchor, k)
        assert _ids_set(lit_ids) == ref_ids
        torch.testing.assert_close(lit_dist.double(), ref_dist, atol=1e-5, rtol=1e-5)


def test_exact_ties_go_to_the_earlier_candidate():
    m = torch.zeros(1, 1, 64, 64)  # every candidate is at distance 0
    s = nonlocal_topk(m, torch.tensor([[32, 32]]), 5)
    assert s.ids[0].tolist() == [[12, 12], [12, 13], [12, 14], [12, 15], [12, 16]]  # row-major window order


def test_batch_equals_per_image_calls():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(8, 4, 128, 160, generator=g)
    anchors = torch.tensor([[16, 16], [112, 144], [64, 80], [20, 140], [100, 30], [50, 50], [16, 144], [112, 16]])
    batch = nonlocal_topk(maps, anchors, 64)
    for i in range(8):
        one = nonlocal_topk(maps[i:i + 1], anchors[i:i + 1], 64)
        assert torch.equal(batch.ids[i], one.ids[0]) and torch.equal(batch.dist[i], one.dist[0])
        assert torch.equal(batch.window[i], one.window[0])
    with pytest.raises(ValueError, match="fewer than k=900 candidates"):
        nonlocal_topk(maps[:1], anchors[:1], 900)


def test_python_random_anchors_follow_the_official_draw_order():
    random.seed(0)
    src = PythonRandomAnchors()
    drawn = [src.draw(n, 1, 256, 256, 16)[0].tolist() for n in ("loc", "loc_idt", "pos", "neg")]
    assert drawn == [[232, 114], [210, 123], [26, 82], [146, 140]]  # the fixture's recorded anchors
    batch = PythonRandomAnchors(random.Random(5)).draw("loc", 3, 100, 200, 16)
    rng = random.Random(5)
    assert batch.tolist() == [[rng.randint(16, 84), rng.randint(16, 184)] for _ in range(3)]


def test_seeded_anchors_are_a_pure_function_of_seed_step_and_name():
    a = SeededAnchors(3, step=10)
    first = a.draw("pos", 4, 256, 256, 16)
    a.draw("neg", 4, 256, 256, 16)
    assert torch.equal(a.draw("pos", 4, 256, 256, 16), first)  # no hidden state
    assert torch.equal(SeededAnchors(3).at(10).draw("pos", 4, 256, 256, 16), first)
    assert not torch.equal(a.at(11).draw("pos", 4, 256, 256, 16), first)
    assert not torch.equal(a.draw("neg", 4, 256, 256, 16), first)
    many = SeededAnchors(0).draw("loc", 2000, 64, 80, 16)
    assert many[:, 0].min() == 16 and many[:, 0].max() == 48 and many[:, 1].max() == 64


def test_fixed_anchors_are_checked():
    src = FixedAnchors({"loc": [[20, 30]], "pos": [[16, 16], [40, 40]]})
    assert src.draw("loc", 1, 64, 64, 16).tolist() == [[20, 30]]
    with pytest.raises(KeyError, match="no fixed anchor for sampler 'neg'"):
        src.draw("neg", 1, 64, 64, 16)
    with pytest.raises(ValueError, match="2 fixed anchors for a batch of 1"):
        src.draw("pos", 1, 64, 64, 16)
    with pytest.raises(ValueError, match="outside"):
        FixedAnchors({"loc": [[60, 30]]}).draw("loc", 1, 64, 64, 16)


def test_position_mapping_faithful_vs_fixed():
    ids = torch.tensor([[[0, 0], [128, 255], [255, 17]]])
    # at 256-px crops both give the official ⌊y·H_l/256⌋ cells
    for hw in ((255, 255), (127, 127), (63, 63), (31, 31)):
        assert torch.equal(layer_positions(ids, (256, 256), hw, True), layer_positions(ids, (256, 256), hw, False))
    assert layer_positions(ids, (256, 256), (255, 255), True).tolist() == [[0, 127 * 255 + 254, 254 * 255 + 16]]
    # a 192×320 crop: the official mapping uses /256 and H_l on both axes, the fixed one each axis' ratio
    ids = torch.tensor([[[100, 300]]])
    assert layer_positions(ids, (192, 320), (191, 319), False).tolist() == [[99 * 319 + 299]]
    assert layer_positions(ids, (192, 320), (191, 319), True).tolist() == [[74 * 319 + 223]]
    with pytest.raises(ValueError, match="assumes 256-px crops"):
        layer_positions(torch.tensor([[[300, 10]]]), (320, 320), (319, 319), True)


def test_gather_rows_picks_feature_vectors():
    feat = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    flat = torch.tensor([[0, 7], [19, 19]])
    rows = gather_rows(feat, flat)
    assert rows.shape == (2, 2, 3)
    assert torch.equal(rows[0, 1], feat[0, :, 1, 2]) and torch.equal(rows[1, 0], feat[1, :, 3, 4])


def test_official_search_results_as_sets(shared):
    """sampling.pt: the official sampler's picks for 12 anchors × k ∈ {8, 128, 256}, on the image and on
    netBack's layer-0 features of it; the same sets, windows and (sorted) distances."""
    fx = shared("fixtures", "nlcl")
    rec = torch.load(fx / "sampling.pt", weights_only=True)
    image = torch.load(fx / "losses_256.pt", weights_only=True)["O"]
    back = torch.load(fx / "nets_state_dict.pt", weights_only=True)["netBack"]
    with torch.no_grad():
        gb0 = torch.nn.functional.conv2d(image, back["gen.0.weight"], back["gen.0.bias"], padding=1)
    assert abs(gb0.double().sum().item() - rec["meta"]["GB0_stats"]["sum"]) < 1e-2
    for name, m in (("O", image), ("GB0", gb0)):
        r = rec["maps"][name]
        for k in (8, 128, 256):
            s = nonlocal_topk(m.expand(len(r["anchors"]), -1, -1, -1), r["anchors"], k)  # all anchors in one batch
            assert torch.equal(s.window, r["window"]) and torch.equal(s.n_candidates, r["n_candidates"])
            for i in range(len(r["anchors"])):
                assert _ids_set(s.ids[i]) == _ids_set(r[f"k{k}"]["ids"][i]), (name, r["anchors"][i].tolist(), k)
                torch.testing.assert_close(s.dist[i].sort().values, r[f"k{k}"]["dist"][i].sort().values,
                                           atol=1e-5, rtol=1e-5)
