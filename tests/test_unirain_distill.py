"""Offline retrieval-based distillation (UniRain's RAG filter with local substitutes): deterministic for a
seed, a keep-list that records every score and vote and round-trips through JSON/CSV, the retrieval
cascade, cross-fitted J2, pair-sanity checks that catch each corruption kind, and the end-to-end
corrupted-subset validation.

The J3 thresholds were set on Rain100L train pairs 1-40 plus the generated types, corrupted with
``corrupt_pair`` (the distributions of each sub-score, clean vs corrupted, are what ``DistillConfig``'s
defaults sit between); the reported precision/recall figures come from other pairs (see the report).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from derainkit.data.distill import (CORRUPTIONS, Candidate, DistillConfig, KeepList, candidate_items, corrupt_pair,
                                    distill, pair_sanity_checks, pair_sanity_scores, real_probabilities,
                                    reference_items, retrieve, validate_filter, _zscore)
from derainkit.data.rain_types import RAIN_TYPES, render
from derainkit.errors import ConfigError, DatasetError

CFG = DistillConfig(k1=3, k2=2, k3=2, work_side=96, ssim_side=32, reference_crops=2, j2_folds=3)


def _small(img, size=(128, 96)):
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return cv2.resize(img[..., :3], size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def pool():
    import skimage.data as sd

    cleans = [_small(s) for s in (sd.chelsea(), sd.astronaut(), sd.coffee(), sd.camera())]
    cands = []
    for k, clean in enumerate(cleans):
        for t in RAIN_TYPES:
            rainy, target, _ = render(clean, t, seed=[7, k, RAIN_TYPES.index(t)])
            cands.append(Candidate(f"{t}/{k}", t, rainy, target))
    ref_sources = [_small(s, (144, 96)) for s in (sd.immunohistochemistry(), sd.astronaut()[200:, 100:],
                                                   sd.coffee()[:, 200:], sd.chelsea()[50:, 150:])]
    refs = [(f"ref{k}", render(img, "drs" if k < 2 else "nrs", seed=[9, k])[0]) for k, img in enumerate(ref_sources)]
    return cands, refs


def test_distillation_is_deterministic_and_records_every_score(pool, tmp_path):
    cands, refs = pool
    a, b = distill(cands, refs, CFG), distill(cands, refs, CFG)
    assert a.to_json() == b.to_json() and a.version == b.version and a.csv_text() == b.csv_text()
    other = distill(cands, refs, DistillConfig(**{**CFG.to_dict(), "seed": 1}))
    assert other.version != a.version  # the seed draws J2's reference crops and folds
    for row in a.rows:
        assert row["j1_vote"] == (row["j1_distance"] <= row["j1_threshold"])
        assert row["j2_vote"] == (row["j2_p_real"] >= row["j2_threshold"])
        checks = [row[f"j3_{k}"] for k in ("aligned", "no_colour_shift", "clean_target", "rain_like_residual")]
        assert row["j3_vote"] == all(checks)
        assert row["votes"] == row["j1_vote"] + row["j2_vote"] + row["j3_vote"]
        assert row["keep_2of3"] == (row["votes"] >= 2) and row["keep"] == row["keep_2of3"]
        assert row["keep_sanity_veto"] == (row["j3_vote"] and row["votes"] >= 2)
        assert len(row["refs"].split(";")) == 2 and np.isfinite(row["l3_ssim"])
    assert 0 < len(a.kept) < len(a.rows)
    js, cs = a.write(tmp_path / "keep")
    assert KeepList.read(js).version == a.version and json.loads(js.read_text())["total"] == len(cands)
    lines = cs.read_text().splitlines()
    assert lines[0].startswith("# derainkit-distill-keeplist v1 version " + a.version) and len(lines) == 2 + len(cands)
    assert "j3_target_rain" in lines[1] and "retrieval" not in lines[1]


def test_retrieval_cascade_narrows_and_matches_day_with_day(pool):
    cands, refs = pool
    r_items, c_items = reference_items(refs, CFG), candidate_items(cands, CFG)
    mu, sd = _zscore(r_items, c_items)
    for item in c_items:
        r = retrieve(item, r_items, CFG, mu, sd)
        l1, l2, l3 = ([x[0] for x in r[k]] for k in ("level1", "level2", "level3"))
        assert len(l1) == 3 and len(l2) == 2 and len(l3) == 2 and set(l3) <= set(l2) <= set(l1)
        d = [x[1] for x in r["level1"]]
        assert d == sorted(d)
        # the luma histogram separates day from night: the nearest reference is of the same condition
        night = item.rain_type.startswith("n")
        assert (l1[0] in ("ref2", "ref3")) == night, (item.id, l1)


def test_j2_is_cross_fitted(pool):
    cands, refs = pool
    r_items, c_items = reference_items(refs, CFG), candidate_items(cands, CFG)
    prob, folds = real_probabilities(c_items, r_items, CFG)
    assert sorted(np.bincount(folds).tolist()) == [5, 5, 6] and np.all((prob > 0) & (prob < 1))
    # make candidate 0 an outlier: the candidates scored by the same fold's model never saw it, so theirs
    # stay the same; the other folds' models were trained on it, so their scores move
    c_items[0].feats = c_items[0].feats * 50.0
    prob2, folds2 = real_probabilities(c_items, r_items, CFG)
    same = (folds == folds[0]) & (np.arange(len(folds)) != 0)
    assert np.array_equal(folds, folds2) and np.array_equal(prob[same], prob2[same])
    assert not np.allclose(prob[folds != folds[0]], prob2[folds != folds[0]])


@pytest.mark.parametrize("rain_type", ["drs", "nrs"])
def test_pair_sanity_catches_each_corruption(pool, rain_type):
    cands, _ = pool
    rng = np.random.default_rng(0)
    expected = {"misaligned": "aligned", "colour_shift": "no_colour_shift", "uniform_noise": "rain_like_residual",
                "rain_in_target": "clean_target"}
    for cand in (c for c in cands if c.rain_type == rain_type):
        rainy, clean = (cv2.resize(x, (144, 96), interpolation=cv2.INTER_AREA) for x in (cand.rainy, cand.clean))
        assert all(pair_sanity_checks(pair_sanity_scores(rainy, clean), CFG).values()), cand.id
        for kind in CORRUPTIONS:
            r2, c2, params = corrupt_pair(rainy, clean, kind, rng)
            checks = pair_sanity_checks(pair_sanity_scores(r2, c2), CFG)
            assert not checks[expected[kind]], (cand.id, kind, params)


def test_validation_reports_precision_and_recall_consistently(pool):
    cands, refs = pool
    report, keeplist = validate_filter(cands, refs, CFG, fraction=0.5, seed=3)
    rows = keeplist.rows
    corrupted = [r for r in rows if r["corruption"]]
    assert report["corrupted"] == len(corrupted) > 0 and report["pool"] == len(cands)
    for rule, col in (("2of3", "keep_2of3"), ("sanity_veto", "keep_sanity_veto")):
        rejected = [r for r in rows if not r[col]]
        tp = sum(1 for r in rejected if r["corruption"])
        assert report["rules"][rule]["recall"] == pytest.approx(tp / len(corrupted))
        assert report["rules"][rule]["precision"] == pytest.approx(tp / max(1, len(rejected)))
    # J3 alone sees every misaligned or colour-shifted pair here
    for kind in ("misaligned", "colour_shift"):
        if kind in report["judges"]["J3"]["recall_by_kind"]:
            assert report["judges"]["J3"]["recall_by_kind"][kind] == 1.0
    assert report["rules"]["sanity_veto"]["recall"] >= report["rules"]["2of3"]["recall"]
    again, _ = validate_filter(cands, refs, CFG, fraction=0.5, seed=3)
    assert again == report


def test_bad_input_is_refused(pool):
    cands, refs = pool
    with pytest.raises(ConfigError, match="k3 <= k2 <= k1"):
        DistillConfig(k1=2, k2=3)
    with pytest.raises(ConfigError, match="unknown distillation config key"):
        DistillConfig.from_dict({"K1": 3})
    with pytest.raises(ConfigError, match="rule"):
        DistillConfig(rule="majority")
    with pytest.raises(DatasetError, match="at least 2"):
        distill(cands[:2], refs[:1], CFG)
    with pytest.raises(DatasetError, match="share the id"):
        distill([cands[0], cands[0]], refs, CFG)
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt_pair(cands[0].rainy, cands[0].clean, "blur", np.random.default_rng(0))


def test_kept_pairs_become_a_training_layout(tmp_path, pool):
    from derainkit.data.distill import candidates_from_rain_types, write_kept_layout
    from derainkit.data.rain_types import make_rain_types, rain_type_pairs

    cands, refs = pool
    src = make_rain_types([c.clean for c in cands if c.rain_type == "drs"], tmp_path / "pool", seed=0)
    keeplist = distill(candidates_from_rain_types(src), refs, CFG)
    assert all(r["clean_source"].endswith(f"/target/{r['id'].split('/')[1]}.png") for r in keeplist.rows)
    kept = rain_type_pairs(write_kept_layout(keeplist, tmp_path / "kept"))
    everything = rain_type_pairs(write_kept_layout(keeplist, tmp_path / "all", which="all"))
    assert sum(len(v) for v in kept.values()) == len(keeplist.kept) < sum(len(v) for v in everything.values()) == 16
    first = kept[next(iter(kept))][0]
    assert first.rainy.read_bytes() == (src / first.rainy.relative_to(tmp_path / "kept")).read_bytes()
    report, corrupted = validate_filter(candidates_from_rain_types(src), refs, CFG, fraction=0.5)
    with pytest.raises(DatasetError, match="corrupted validation pool"):
        write_kept_layout(corrupted, tmp_path / "bad")
