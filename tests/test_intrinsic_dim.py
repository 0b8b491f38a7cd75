"""Intrinsic-dimension estimators recover the dimension of data whose dimension is known."""
from __future__ import annotations

import numpy as np
import pytest

from derainkit.errors import ConfigError
from derainkit.metrics.intrinsic_dim import (levina_bickel, nonlocal_patches, sample_patches, twonn, verdict)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subspace(d: int, n: int = 3000, ambient: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(ambient, d)))[0]
    return rng.random((n, d)) @ basis.T + 5.0  # uniform on a d-cube inside R^40


@pytest.mark.parametrize("d", [2, 5, 10])
def test_estimators_recover_a_known_dimension(d):
    pts = _subspace(d)
    for est in (twonn(pts), levina_bickel(pts)):
        assert est.low <= est.dimension <= est.high
        assert abs(est.dimension - d) < 0.2 * d + 0.5, (est.method, d, est)


def test_higher_dimension_is_told_apart_and_duplicates_are_removed():
    low, high = twonn(_subspace(3, seed=1)), twonn(_subspace(12, seed=2))
    assert verdict(high, low) == "background higher" and verdict(low, high) == "background lower"
    pts = _subspace(4, n=500)
    est = twonn(np.concatenate([pts, pts[:50]]))
    assert est.duplicates == 50 and est.points == round(500 * 0.9)


def test_patch_samplers(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((80, 90, 3)).astype(np.float32)
    p = sample_patches(img, 5, 100, seed=1)
    assert p.shape == (100, 75) and np.array_equal(p, sample_patches(img, 5, 100, seed=1))
    nl = nonlocal_patches(img, 5, anchors=3, per_anchor=8, window=20, seed=2)
    assert nl.shape == (24, 75)
    with pytest.raises(ConfigError, match="too small"):
        nonlocal_patches(img[:10], 5, 1, 2)
    with pytest.raises(ConfigError, match="n >= 3"):
        twonn(np.zeros((2, 4)))
