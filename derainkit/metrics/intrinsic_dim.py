"""Intrinsic dimension of patch sets, to test NLCL's TPAMI-2024 claim on data we have.

The TPAMI abstract reports that non-local *background* patches have a higher intrinsic dimension
than *rain* patches, and derives an asymmetric contrastive loss from it. This module measures it:

``twonn(points)``
    Facco et al. (Sci. Rep. 2017). With r₁ ≤ r₂ the distances of a point to its two nearest
    neighbours, μ = r₂/r₁ is Pareto-distributed with exponent d, so the maximum-likelihood estimate is
    d̂ = n / Σ log μ over the n points kept (the largest ``discard`` fraction of μ is dropped, as the
    authors advise, against noise). Since 2d·Σ log μ ~ χ²(2n), the confidence interval is exact:
    [χ²_{α/2}(2n), χ²_{1−α/2}(2n)] / (2 Σ log μ).
``levina_bickel(points, k1, k2)``
    Levina & Bickel (NIPS 2004) maximum likelihood from the k nearest neighbours: per point,
    m̂_k(x) = [(1/(k−1)) Σ_{j<k} log(T_k/T_j)]⁻¹; the global estimate averages the inverses over points
    (MacKay & Ghahramani's correction) and over k in [k1, k2]. Interval: a percentile bootstrap over
    points (seeded).

Patches (``sample_patches``) are flattened l×l×3 blocks of an image layer: a background (a clean
image, or a model's B̂), or a rain layer (rainy − clean, or R̂). ``nonlocal_patches`` takes instead,
around random anchors, the most self-similar patches in a window, as NLCL's sampler does (the
"non-local" patches of the claim). Exact duplicates (distance 0, e.g. flat sky or empty rain) make
μ and the logarithms undefined; they are removed first and the count is reported.

Distances come from :func:`derainkit.knn.knn` (exact squared L2, memory-bounded), so tens of
thousands of 300-dimensional patches are fine on a CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from derainkit.errors import ConfigError


@dataclass(frozen=True)
class IDEstimate:
    method: str
    dimension: float
    low: float  # confidence interval (level ``confidence``)
    high: float
    points: int  # points used (duplicates removed)
    duplicates: int
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def _unique(points: np.ndarray) -> tuple[np.ndarray, int]:
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[0] < 3:
        raise ConfigError(f"intrinsic dimension needs an n×D array with n >= 3 points, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ConfigError("intrinsic dimension: the points contain NaN or inf")
    unique = np.unique(points, axis=0)
    return unique, points.shape[0] - unique.shape[0]


def _neighbour_distances(points: np.ndarray, k: int) -> np.ndarray:
    """n×k Euclidean distances to each point's k nearest other points, ascending."""
    from derainkit.knn import knn

    x = torch.from_numpy(points.astype(np.float32))[None]
    dist, idx = knn(x, x, k + 1)  # the point itself comes first (distance 0)
    d = dist[0].double().clamp_min(0).sqrt().numpy()
    own = idx[0].numpy() == np.arange(points.shape[0])[:, None]
    # drop each point's own entry (ties at 0 cannot occur: duplicates were removed)
    out = np.where(own[:, :1], d[:, 1:], d[:, :-1])
    return np.sort(out, axis=1)


def twonn(points: np.ndarray, discard: float = 0.1, confidence: float = 0.95) -> IDEstimate:
    """TwoNN maximum-likelihood intrinsic dimension with its exact χ² confidence interval."""
    from scipy.stats import chi2

    pts, dup = _unique(points)
    if not 0.0 <= discard < 1.0:
        raise ConfigError(f"discard={discard} must be in [0, 1)")
    d = _neighbour_distances(pts, 2)
    mu = np.sort(d[:, 1] / d[:, 0])
    n = max(2, int(round(len(mu) * (1.0 - discard))))
    s = float(np.log(mu[:n]).sum())
    a = (1.0 - confidence) / 2.0
    return IDEstimate("twonn", n / s, float(chi2.ppf(a, 2 * n)) / (2 * s), float(chi2.ppf(1 - a, 2 * n)) / (2 * s),
                      n, dup, confidence)


def levina_bickel(points: np.ndarray, k1: int = 10, k2: int = 20, confidence: float = 0.95,
                  bootstrap: int = 200, seed: int = 0) -> IDEstimate:
    """Levina–Bickel MLE averaged over k in [k1, k2] (inverse-averaged over points), bootstrap interval."""
    pts, dup = _unique(points)
    if not 2 <= k1 <= k2 < pts.shape[0]:
        raise ConfigError(f"levina_bickel needs 2 <= k1 <= k2 < number of points ({pts.shape[0]}), got {k1}, {k2}")
    logs = np.log(_neighbour_distances(pts, k2))  # n×k2
    # inverse per-point estimates 1/m̂_k(x) = mean_{j<k} log(T_k / T_j), for each k in [k1, k2]
    inv = np.stack([(logs[:, k - 1][:, None] - logs[:, :k - 1]).mean(axis=1) for k in range(k1, k2 + 1)])
    # inv: (k2 − k1 + 1) × n

    def estimate(rows: np.ndarray) -> float:
        return float(np.mean(1.0 / inv[:, rows].mean(axis=1)))

    rng = np.random.default_rng(seed)
    n = pts.shape[0]
    boots = np.array([estimate(rng.integers(0, n, n)) for _ in range(bootstrap)])
    a = (1.0 - confidence) / 2.0
    return IDEstimate("levina_bickel", estimate(np.arange(n)), float(np.quantile(boots, a)),
                      float(np.quantile(boots, 1 - a)), n, dup, confidence)


def sample_patches(layer: np.ndarray, size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` flattened ``size``×``size``×C patches of an H×W×C layer at seeded uniform positions."""
    layer = np.asarray(layer, np.float32)
    h, w = layer.shape[:2]
    if h < size or w < size:
        raise ConfigError(f"a {h}×{w} layer is smaller than the {size}-px patches")
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, h - size + 1, count), rng.integers(0, w - size + 1, count)
    return np.stack([layer[y:y + size, x:x + size].reshape(-1) for y, x in zip(ys, xs)])


def nonlocal_patches(layer: np.ndarray, size: int, anchors: int, per_anchor: int, window: int = 40,
                     seed: int = 0) -> np.ndarray:
    """Around ``anchors`` seeded random centres, the ``per_anchor`` patches most similar to the anchor's
    within a ``window``-px window (NLCL's non-local sampling, stride 1), flattened and stacked."""
    layer = np.asarray(layer, np.float32)
    h, w = layer.shape[:2]
    half = window // 2
    if h < window + size or w < window + size:
        raise ConfigError(f"a {h}×{w} layer is too small for {window}-px windows of {size}-px patches")
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(np.ascontiguousarray(layer.transpose(2, 0, 1)))[None]
    out = []
    for _ in range(anchors):
        cy = int(rng.integers(half, h - half - size + 1))
        cx = int(rng.integers(half, w - half - size + 1))
        region = t[..., cy - half:cy + half + size, cx - half:cx + half + size]
        cand = torch.nn.functional.unfold(region, size)[0].T  # candidates × (C·size²)
        anchor = t[..., cy:cy + size, cx:cx + size].reshape(1, -1)
        order = ((cand - anchor) ** 2).sum(1).argsort(stable=True)[:per_anchor]
        out.append(cand[order].numpy())
    return np.concatenate(out)


def compare_layers(background: np.ndarray, rain: np.ndarray, seed: int = 0, **kw) -> dict[str, IDEstimate]:
    """TwoNN and Levina–Bickel of two patch sets, keyed ``<layer>/<method>``."""
    out = {}
    for name, pts in (("background", background), ("rain", rain)):
        out[f"{name}/twonn"] = twonn(pts)
        out[f"{name}/levina_bickel"] = levina_bickel(pts, seed=seed, **kw)
    return out


def verdict(background: IDEstimate, rain: IDEstimate) -> str:
    """'higher' / 'lower' when the intervals do not overlap, else 'not resolved'."""
    if background.low > rain.high:
        return "background higher"
    if background.high < rain.low:
        return "background lower"
    return "not resolved (intervals overlap)"


__all__ = ["IDEstimate", "compare_layers", "levina_bickel", "nonlocal_patches", "sample_patches", "twonn",
           "verdict"]
