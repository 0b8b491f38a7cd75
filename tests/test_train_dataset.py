"""Training samples: a pure function of (seed, iteration, slot); epochs; exemplar policies; bad input."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from derainkit.errors import DatasetError
from derainkit.io import write_image
from derainkit.train.dataset import (
    PairSampler,
    TrainingSet,
    global_descriptor,
    iterate_batches,
    official_exemplar_table,
    retrieval_exemplar_table,
)


def _arrays(n: int, h: int = 40, w: int = 48, seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    clean = [rng.random((h, w, 3), dtype=np.float32) for _ in range(n)]
    rainy = [np.clip(c + 0.1, 0, 1).astype(np.float32) for c in clean]
    return TrainingSet.from_arrays(rainy, clean)


def _write_rain100(root, names, h=36, w=40, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        clean = rng.random((h, w, 3)).astype(np.float32)
        write_image(root / "norain" / f"{name}.png", clean)
        write_image(root / "rain" / f"{name}.png", np.clip(clean + 0.2, 0, 1))
    return root


def test_sample_is_a_pure_function_of_seed_iteration_slot():
    data = _arrays(5)
    a = PairSampler(data, crop=16, batch=4, seed=7, exemplar="random")
    b = PairSampler(data, crop=16, batch=4, seed=7, exemplar="random")
    order = [(9, 3), (0, 0), (9, 3), (2, 1)]
    first = [a.sample(it, s) for it, s in order]
    second = [b.sample(it, s) for it, s in reversed(order)][::-1]  # other instance, other call order
    for x, y in zip(first, second):
        assert (x.index, x.top, x.left, x.exemplar_index, x.exemplar_top, x.exemplar_left) == \
            (y.index, y.top, y.left, y.exemplar_index, y.exemplar_top, y.exemplar_left)
        assert np.array_equal(x.rainy, y.rainy) and np.array_equal(x.exemplar, y.exemplar)
    c = PairSampler(data, crop=16, batch=4, seed=8, exemplar="random")
    assert [(c.sample(it, 0).top, c.sample(it, 0).left) for it in range(6)] != \
        [(a.sample(it, 0).top, a.sample(it, 0).left) for it in range(6)]


def test_crops_are_aligned_and_inside_the_image():
    h, w = 30, 50
    yy, xx = np.mgrid[0:h, 0:w]
    clean = np.stack([yy / h, xx / w, np.zeros_like(yy, float)], -1).astype(np.float32)
    data = TrainingSet.from_arrays([clean + 0.0], [clean])
    s = PairSampler(data, crop=12, batch=2, seed=1)
    seen = set()
    for it in range(40):
        smp = s.sample(it, it % 2)
        assert 0 <= smp.top <= h - 12 and 0 <= smp.left <= w - 12
        assert np.array_equal(smp.clean, clean[smp.top:smp.top + 12, smp.left:smp.left + 12])
        assert np.array_equal(smp.rainy, smp.clean)
        seen.add((smp.top, smp.left))
    assert len(seen) > 30  # positions vary


def test_every_pair_once_per_epoch():
    data = _arrays(5)
    s = PairSampler(data, crop=8, batch=2, seed=3)
    indices = [s.pair_index(it, slot) for it in range(10) for slot in range(2)]  # 20 samples = 4 epochs
    for e in range(4):
        assert sorted(indices[5 * e:5 * e + 5]) == list(range(5))
    assert indices[:5] != indices[5:10]  # each epoch is its own permutation
    assert s.epoch_of(10) == 4.0


def test_batches_are_tensors_and_rank_slots_tile_the_global_batch():
    data = _arrays(6)
    s = PairSampler(data, crop=16, batch=4, seed=0, exemplar="self")
    full = s.batch(3)
    assert full["rainy"].shape == (4, 3, 16, 16) and full["rainy"].dtype == torch.float32
    assert full["exemplar"].shape == (4, 3, 16, 16)
    r0, r1 = s.batch(3, slots=[0, 2]), s.batch(3, slots=[1, 3])  # world size 2
    for key in ("rainy", "clean", "exemplar"):
        assert torch.equal(torch.stack([r0[key][0], r1[key][0], r0[key][1], r1[key][1]]), full[key])
    assert "exemplar" not in s.batch(3, with_exemplar=False)


def test_loader_workers_give_the_same_batches():
    s = PairSampler(_arrays(4), crop=16, batch=2, seed=5, exemplar="random")
    inline = list(iterate_batches(s, 2, 6))
    rng_before = torch.get_rng_state()
    workers = list(iterate_batches(s, 2, 6, num_workers=2))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone (exact resume)
    assert len(inline) == len(workers) == 4
    for a, b in zip(inline, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ exemplar policies

def test_policy_self_none_random():
    data = _arrays(4)
    self_s = PairSampler(data, crop=16, batch=2, seed=0, exemplar="self")
    none_s = PairSampler(data, crop=16, batch=2, seed=0, exemplar="none")
    rand_s = PairSampler(data, crop=16, batch=2, seed=0, exemplar="random")
    drawn = set()
    for it in range(30):
        for slot in range(2):
            a = self_s.sample(it, slot)
            assert a.exemplar_index == a.index
            j, t, l = a.exemplar_index, a.exemplar_top, a.exemplar_left
            assert np.array_equal(a.exemplar, data.rainy[j][t:t + 16, l:l + 16])  # the RAINY image
            assert none_s.sample(it, slot).exemplar is None
            r = rand_s.sample(it, slot)
            assert r.exemplar_index != r.index
            drawn.add((r.index, r.exemplar_index))
            # same seed, same draws; the input crop does not depend on the policy
            assert (r.index, r.top, r.left) == (a.index, a.top, a.left)
    assert len(drawn) == 12  # every ordered pair of distinct images occurs
    single = PairSampler(_arrays(1), crop=16, batch=2, seed=0, exemplar="random")
    assert single.sample(0, 0).exemplar_index == 0  # nothing else to draw


def test_policy_retrieval_picks_the_most_similar_other_image():
    h, w = 32, 32
    yy, xx = np.mgrid[0:h, 0:w] / 32.0
    red = np.stack([0.3 + 0.6 * xx, 0.1 * yy, 0.1 + 0 * xx], -1)
    blue = np.stack([0.1 + 0 * xx, 0.2 * xx, 0.3 + 0.6 * yy], -1)
    rng = np.random.default_rng(0)
    imgs = [red, blue, red + 0.03 * rng.random(red.shape), np.clip(blue * 0.95 + 0.02, 0, 1)]
    imgs = [np.clip(i, 0, 1).astype(np.float32) for i in imgs]
    assert retrieval_exemplar_table(imgs) == [2, 3, 0, 1]
    d = global_descriptor(imgs[0])
    assert d.ndim == 1 and np.linalg.norm(d) == pytest.approx(1.0)
    data = TrainingSet.from_arrays(imgs, imgs)
    s = PairSampler(data, crop=16, batch=2, seed=0, exemplar="retrieval")
    for it in range(4):
        smp = s.sample(it, 0)
        assert smp.exemplar_index == [2, 3, 0, 1][smp.index]
    rep = s.exemplar_report()
    assert rep["exemplar_of"] == {"0000": "0002", "0001": "0003", "0002": "0000", "0003": "0001"}


def test_policy_official_follows_the_listdir_vs_sorted_rule(tmp_path):
    root = _write_rain100(tmp_path / "set", ["a", "b", "c"])
    data = TrainingSet.load(root, progress=False)
    assert data.ids == ["a", "b", "c"]
    # listdir order c, a, b vs sorted a, b, c: c (position 0) -> a, a (1) -> b, b (2) -> c
    scrambled = lambda folder: ["c.png", "a.png", "b.png"]  # noqa: E731
    assert official_exemplar_table(data.pairs, scrambled) == [1, 2, 0]
    s = PairSampler(data, crop=16, batch=1, seed=0, exemplar="official", listdir=scrambled)
    for it in range(6):
        smp = s.sample(it, 0)
        assert smp.exemplar_index == [1, 2, 0][smp.index]
    rep = s.exemplar_report()
    assert rep["exemplar_of"] == {"a": "b", "b": "c", "c": "a"} and "filesystem dependent" in rep["note"]
    # A sorted listing pairs every image with itself (the official code on such a filesystem).
    assert official_exemplar_table(data.pairs, lambda f: sorted(os.listdir(f))) == [0, 1, 2]
    # By default the real os.listdir order is used, whatever it is here.
    listed = [n for n in os.listdir(root / "rain")]
    expected = [data.ids.index(sorted(listed)[listed.index(f"{i}.png")][:-4]) for i in data.ids]
    assert official_exemplar_table(data.pairs) == expected


# ------------------------------------------------------------------------------ bad input

def test_crop_larger_than_an_image_names_it(tmp_path):
    root = _write_rain100(tmp_path / "set", ["a", "b"], h=36, w=40)
    data = TrainingSet.load(root, progress=False)
    with pytest.raises(DatasetError, match=r"crop 38×38 is larger than 2 training image\(s\).*a\.png \(36×40\)"):
        PairSampler(data, crop=38, batch=2, seed=0)
    PairSampler(data, crop=36, batch=2, seed=0)  # exactly the height is fine


def test_folders_without_training_pairs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no known data layout"):
        TrainingSet.load(empty, progress=False)
    with pytest.raises(DatasetError, match="not found"):
        TrainingSet.load(tmp_path / "missing", progress=False)
    only_rain = tmp_path / "rainy_only"
    write_image(only_rain / "x.png", np.zeros((20, 20, 3), np.float32))
    with pytest.raises(DatasetError, match="training needs clean images"):
        TrainingSet.load(only_rain, layout="unpaired", progress=False)
