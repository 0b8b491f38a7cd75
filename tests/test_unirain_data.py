"""Four rain types (UniRain's DRS/DRD/NRS/NRD) rendered from clean images: seeded and recorded, the
{type}/{input,target} layout and its reader, and each type differs from its target the way it should
(streaks: oriented residual; drops: a few compact local blobs; night: a darker target with bright light
spots, plus lit streaks or drops)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy import ndimage

from derainkit.data import make_paired_dataset
from derainkit.data.manifest import file_sha256
from derainkit.data.rain_types import (RAIN_TYPES, make_rain_types, rain_type_pairs, read_manifest, render,
                                       write_type_examples)
from derainkit.errors import ConfigError, DatasetError
from derainkit.io import read_image


@pytest.fixture(scope="module")
def cleans():
    import skimage.data as sd

    def small(img):
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        return cv2.resize(img, (144, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    return [small(sd.chelsea()), small(sd.astronaut()), small(sd.coffee())]


def _orientation_ratio(residual: np.ndarray) -> float:
    """Horizontal over vertical gradient energy of the (slightly smoothed) grey residual: > 1 for
    near-vertical streaks, about 1 for isotropic content."""
    g = ndimage.gaussian_filter(residual.mean(axis=2), 1.0)
    gy, gx = np.gradient(g)
    return float((gx ** 2).sum() / (gy ** 2).sum())


def _blobs(residual: np.ndarray, thr: float = 0.03, min_area: int = 15) -> tuple[float, list[float]]:
    """(fraction of changed pixels, bounding-box aspect ratios of the changed regions of >= min_area px)."""
    mask = np.abs(residual).max(axis=2) > thr
    lab, _ = ndimage.label(mask)
    aspects = []
    for sl in ndimage.find_objects(lab):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w >= min_area:
            aspects.append(max(h, w) / min(h, w))
    return float(mask.mean()), aspects


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_type_differs_from_its_target_as_expected(cleans, seed):
    clean = cleans[0]
    out = {t: render(clean, t, seed) for t in RAIN_TYPES}
    res = {t: x.astype(np.float64) - y for t, (x, y, _) in out.items()}
    # day streaks: an oriented (near-vertical) residual made of elongated strokes; the target is the clean image
    assert np.array_equal(out["drs"][1], clean)
    assert _orientation_ratio(res["drs"]) > 4.0
    assert np.median(_blobs(res["drs"])[1]) >= 2.5
    # day drops: a few compact, local blobs; no preferred orientation
    frac, aspects = _blobs(res["drd"])
    assert np.array_equal(out["drd"][1], clean)
    assert 0 < frac < 0.1 and aspects and np.median(aspects) <= 2.0
    assert len(out["drd"][2]["drops"]) >= 1 and _orientation_ratio(res["drd"]) < 3.0
    for t in ("nrs", "nrd"):  # night: a darker target with a few bright light spots
        target = out[t][1]
        assert target.mean() < 0.5 * clean.mean()
        bright = (target.max(axis=2) >= 0.95).mean()
        assert 0 < bright < 0.05
        lights = out[t][2]["night"]["light_sources"]
        ys, xs = np.nonzero(target.max(axis=2) >= 0.95)  # every bright pixel belongs to a light source
        near = np.zeros(ys.shape, bool)
        for s in lights:
            near |= np.hypot(ys - s["cy"], xs - s["cx"]) <= 1.5 * (s["core"] + s["glow"])
        assert near.all()
    assert _orientation_ratio(res["nrs"]) > 3.0  # lit streaks (sensor noise is isotropic)
    assert np.median(_blobs(res["nrd"])[1]) <= 2.0  # drops, whose small noise specks are below min_area
    # the night scene is drawn first, so one seed gives both night types the same target
    assert np.array_equal(out["nrs"][1], out["nrd"][1])


def test_generation_is_deterministic_and_recorded(tmp_path, cleans):
    a = make_rain_types(cleans[:2], tmp_path / "a", seed=3, names=["cat", "astro"])
    b = make_rain_types(cleans[:2], tmp_path / "b", seed=3, names=["cat", "astro"])
    c = make_rain_types(cleans[:2], tmp_path / "c", seed=4, names=["cat", "astro"])
    pairs = rain_type_pairs(a)
    assert list(pairs) == list(RAIN_TYPES) and all([p.id for p in v] == ["astro", "cat"] for v in pairs.values())
    manifest = read_manifest(a)
    for t, plist in pairs.items():
        for p in plist:
            assert p.rainy == a / t / "input" / f"{p.id}.png" and p.clean == a / t / "target" / f"{p.id}.png"
            assert (b / t / "input" / f"{p.id}.png").read_bytes() == p.rainy.read_bytes()
            assert (b / t / "target" / f"{p.id}.png").read_bytes() == p.clean.read_bytes()
            entry = manifest["images"][t][p.id]
            assert entry["input_sha256"] == file_sha256(p.rainy) and entry["synthetic"] is True
            assert entry["seed_sequence"] == [3, RAIN_TYPES.index(t), ["cat", "astro"].index(p.id)]
        assert (c / t / "input" / "cat.png").read_bytes() != (a / t / "input" / "cat.png").read_bytes()
    assert json.loads((a / "rain_types.json").read_text()) == json.loads((b / "rain_types.json").read_text())
    assert "drops" in manifest["images"]["drd"]["cat"]["params"]
    assert manifest["images"]["nrs"]["cat"]["params"]["night"]["gamma"] >= 1.8
    # adding an image does not change the earlier ones
    d = make_rain_types(cleans, tmp_path / "d", seed=3, names=["cat", "astro", "coffee"])
    assert (d / "nrd" / "input" / "astro.png").read_bytes() == (a / "nrd" / "input" / "astro.png").read_bytes()


def test_real_day_streaks_and_subsets(tmp_path, cleans):
    real = make_paired_dataset(cleans[:2], tmp_path / "real", seed=0, names=["r1", "r2"])  # rain/ + norain/
    out = make_rain_types(cleans[2:], tmp_path / "mix", types=("drs", "nrd"), seed=0, drs_from=real)
    pairs = rain_type_pairs(out)
    assert list(pairs) == ["drs", "nrd"] and [p.id for p in pairs["drs"]] == ["r1", "r2"]
    assert np.array_equal(read_image(pairs["drs"][0].rainy), read_image(real / "rain" / "r1.png"))
    assert read_manifest(out)["images"]["drs"]["r1"]["synthetic"] is False
    grid = write_type_examples(out, tmp_path / "grid.png", per_type=1)
    img = read_image(grid)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.05


def test_bad_input_is_refused(tmp_path, cleans):
    with pytest.raises(ConfigError, match="unknown rain type"):
        render(cleans[0], "snow")
    with pytest.raises(ConfigError, match="expected a non-empty subset"):
        make_rain_types(cleans[:1], tmp_path / "x", types=("drs", "hail"))
    with pytest.raises(ConfigError, match="unknown drop parameter"):
        render(cleans[0], "drd", 0, ranges={"drop": {"size": (1, 2)}})
    with pytest.raises(DatasetError, match="missing"):
        rain_type_pairs(make_rain_types(cleans[:1], tmp_path / "y", types=("drs",)), types=("drs", "drd"))
    with pytest.raises(DatasetError, match="no rain-type folders"):
        rain_type_pairs(tmp_path)
    narrow = render(cleans[0], "drd", 5, ranges={"drop": {"radius_frac": (0.1, 0.1), "drops_per_10k_px": (2, 2)}})
    assert all(d["radius_frac"] == 0.1 for d in narrow[2]["drops"]) and len(narrow[2]["drops"]) == 3
