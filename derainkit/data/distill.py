"""Retrieval-based dataset distillation, offline: UniRain's RAG filter with local substitutes (reference §3, §6.2).

The paper (§3.1) keeps a labelled candidate pair when, after retrieving its nearest real rainy photos
S(q) from a reference base through three cascaded levels (BLIP-caption text, CLIP image embedding,
SSIM), at least two of three vision-language models judge the candidate's rain realistic given S(q)
(Eq. 5). None of those models can run here. **Every substitution, by stage:**

==========  ============================================  ===============================================
stage       paper                                         here
==========  ============================================  ===============================================
level 1     BLIP caption → CLIP text embedding, L2,       hand-crafted *global appearance / condition*
            keep K1 nearest ("semantic")                  descriptor, L2, keep K1 nearest. It is **not**
                                                          semantic: an 8×8 luma layout (low DCT terms),
                                                          mean chroma, a 16-bin luma histogram (separates
                                                          day from night) and an 8×2 hue/saturation
                                                          histogram, each block unit-length.
level 2     CLIP image embedding, cosine, top K2          a *fixed* encoder built into the kit (no
                                                          training, no weights): rain-cue statistics
                                                          (:func:`rain_features`: gradient-orientation
                                                          histogram and coherence of the high-pass
                                                          residual, MSCN/AGGD statistics as in NIQE,
                                                          Laplacian-of-Gaussian blob responses at three
                                                          scales, exposure and colour statistics),
                                                          z-scored over references and candidates, cosine
level 3     SSIM(query, reference), top K3 → S(q)         the same: SSIM (Gaussian 11, σ 1.5) of the
                                                          grey images resized to a common square side
judges      InternVL2.5-8B, LLaVA-NeXT-7B, MobileVLM-3B   J1 NSS realism: the NIQE feature model (MVG of
            each answers "realistic?" given q and S(q)    36-d block features, :mod:`derainkit.metrics.
                                                          niqe`) *fitted on S(q)*, distance of the query.
                                                          J2 real-vs-candidate logistic regression on the
                                                          level-2 features (positives: crops of the real
                                                          photos; negatives: the candidates, PU-style),
                                                          cross-fitted: each candidate is scored by a
                                                          model trained without it (K folds).
                                                          J3 pair sanity (uses the clean target, which
                                                          the VLMs never see): aligned (low-pass SSIM,
                                                          phase-correlation shift), no colour/exposure
                                                          shift (per-channel median residual), a clean
                                                          target (its high-pass does not correlate with
                                                          the residual where the rain is), a rain-like
                                                          residual (present and sparse, not dense
                                                          noise): :func:`pair_sanity_scores`.
vote        keep if ≥ 2 of 3 say yes (Eq. 5)              ``rule="2of3"``: the same rule on J1-J3.
                                                          ``rule="sanity_veto"``: J3 must pass and ≥ 2
                                                          of 3 (i.e. J3 and (J1 or J2)). The VLMs all
                                                          judge one thing; our judges look at different
                                                          things, so under 2of3 a pair defect only J3
                                                          can see (misalignment, rain left in the
                                                          target, colour shift) survives whenever J1 and
                                                          J2 accept its input. Both rules are reported.
thresholds  the VLMs' binary answers                      J1, J2: retention budgets (the best
                                                          ``j1_keep``/``j2_keep`` fraction of the pool;
                                                          the reference's rule, "below the 90th
                                                          percentile of reference-to-reference
                                                          distances", is computed and recorded too, but
                                                          synthetic and Rain100L candidates are all far
                                                          from real street photos, so it rejects
                                                          nearly everything); J3: fixed thresholds
                                                          (``DistillConfig``), chosen on Rain100L and the
                                                          generated types (see the module tests)
reference   unlabelled real rainy images of all public    any folder of real rainy photos (here the
base        datasets                                      7 NLCL street photos)
==========  ============================================  ===============================================

Output: a :class:`KeepList`, one row per candidate with every score and vote that decided it (retrieved
reference ids and level scores, J1 distance and threshold, J2 probability and threshold, J3 sub-scores
and checks, votes, the decision), written as CSV and JSON with a format version and a content version
(sha256 of config + rows). Deterministic for a seed (the seed draws the J2 reference crops and folds).

Validation (:func:`validate_filter`): corrupt a seeded fraction of the pool (misaligned targets, rain left
in the target, uniform-noise "rain", colour shifts: :func:`corrupt_pair`), run the filter, and report
precision and recall of *rejection* (positives = corrupted pairs), per corruption kind, per judge and for
both vote rules. This measures the mechanics only: the paper's premise, anchoring to a large real corpus,
cannot be reproduced with 7 photos.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
from scipy import ndimage

from derainkit.errors import ConfigError, DatasetError
from derainkit.strictconfig import coerce_fields, strict_from_dict

PathLike = Union[str, os.PathLike]

CORRUPTIONS = ("misaligned", "rain_in_target", "uniform_noise", "colour_shift")
RULES = ("2of3", "sanity_veto")
FORMAT = "derainkit-distill-keeplist"
FORMAT_VERSION = 1
_TAG_CROPS, _TAG_FOLDS, _TAG_CORRUPT = 21, 22, 23


@dataclass(frozen=True)
class DistillConfig:
    """Retrieval sizes, judge thresholds and the vote rule (see the module docstring).

    k1, k2, k3:     references kept by levels 1, 2, 3 (clipped to the base size); S(q) has k3
    work_side:      images are resized (area) to this shorter side before any feature (a multiple of
                    NIQE's 96-px block keeps whole blocks)
    ssim_side:      level-3 SSIM on grey images resized to ssim_side × ssim_side
    j1_keep, j2_keep: retention budget of J1 and J2: the best fraction of the pool passes
    j1_percentile:  the reference rule's percentile of reference-to-reference NSS distances (recorded)
    j2_folds, j2_l2, reference_crops: cross-fitting folds, L2 penalty, and crops per reference photo used
                    as J2 positives
    max_shift, min_align_ssim, max_colour_shift, max_target_rain, min_residual, min_concentration: J3
                    thresholds (pixels at work size, SSIM, channel spread of the relative median residual,
                    correlation, mean |residual|, energy share of the top 10 % residual pixels; see
                    :func:`pair_sanity_scores`), set between the clean and the corrupted pairs of
                    Rain100L and the generated types (scripts in the module tests' docstring)
    rule:           2of3 | sanity_veto
    seed:           draws the J2 reference crops and folds
    """

    k1: int = 20
    k2: int = 8
    k3: int = 3
    work_side: int = 288
    ssim_side: int = 128
    j1_keep: float = 0.7
    j2_keep: float = 0.7
    j1_percentile: float = 90.0
    j2_folds: int = 5
    j2_l2: float = 1.0
    reference_crops: int = 8
    max_shift: float = 1.0
    min_align_ssim: float = 0.7
    max_colour_shift: float = 0.09
    max_target_rain: float = 0.1
    min_residual: float = 0.001
    min_concentration: float = 0.3
    rule: str = "2of3"
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="DistillConfig.")
        if not 1 <= self.k3 <= self.k2 <= self.k1:
            raise ConfigError(f"DistillConfig: need 1 <= k3 <= k2 <= k1, got k1={self.k1}, k2={self.k2}, k3={self.k3}")
        if self.work_side < 96 or self.ssim_side < 11:
            raise ConfigError(f"DistillConfig: work_side >= 96 (one NIQE block) and ssim_side >= 11, got "
                              f"{self.work_side}, {self.ssim_side}")
        for key in ("j1_keep", "j2_keep"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"DistillConfig.{key}={getattr(self, key)}: must be in (0, 1]")
        if self.rule not in RULES:
            raise ConfigError(f"DistillConfig.rule={self.rule!r}: must be one of {list(RULES)}")
        if self.j2_folds < 2 or self.reference_crops < 1:
            raise ConfigError("DistillConfig: j2_folds >= 2 and reference_crops >= 1 are required")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DistillConfig":
        return strict_from_dict(cls, d, "distillation config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """A labelled pair proposed for training: H×W×3 float32 RGB in [0, 1]. ``corruption`` is set by
    :func:`corrupt_candidates` (ground truth for the filter's validation), None for an untouched pair."""

    id: str
    rain_type: str
    rainy: np.ndarray
    clean: np.ndarray
    source: str = ""  # the input's file, when it came from one
    corruption: Optional[str] = None
    clean_source: str = ""  # the target's file


# ------------------------------------------------------------------------------------------- features

def _work(image: np.ndarray, side: int) -> np.ndarray:
    """Resize (area, or bilinear when enlarging) so the shorter side is ``side``."""
    img = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    h, w = img.shape[:2]
    s = side / min(h, w)
    size = (max(side, round(w * s)), max(side, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def appearance_descriptor(img: np.ndarray) -> np.ndarray:
    """Level 1: global appearance / condition (layout, chroma, luma and hue-saturation histograms)."""
    ycc = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2YCrCb).astype(np.float64)
    thumb = cv2.resize(ycc[..., 0], (8, 8), interpolation=cv2.INTER_AREA)
    dct = cv2.dct(thumb)
    layout = np.array([dct[i, j] for i in range(4) for j in range(4) if i + j < 4])  # 10 low-order terms
    chroma = ycc[..., 1:].reshape(-1, 2).mean(axis=0) - 0.5
    luma = np.histogram(ycc[..., 0], bins=16, range=(0.0, 1.0))[0].astype(np.float64)
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)
    hs = np.histogram2d(hsv[..., 0].ravel(), hsv[..., 1].ravel(), bins=(8, 2), range=((0, 360), (0, 1)))[0].ravel()
    blocks = [layout, chroma, luma, hs]
    return np.concatenate([b / (np.linalg.norm(b) + 1e-12) for b in blocks])


def _orientation_stats(g: np.ndarray) -> np.ndarray:
    """12-bin magnitude-weighted gradient-orientation histogram of the high-pass residual, its coherence
    and log energy: streaks give a peaked histogram and high coherence."""
    hp = g - ndimage.gaussian_filter(g, 2.0)
    gy, gx = np.gradient(hp)
    mag = np.hypot(gx, gy)
    theta = np.mod(np.arctan2(gy, gx), np.pi)
    hist = np.histogram(theta, bins=12, range=(0.0, np.pi), weights=mag)[0]
    hist = hist / (hist.sum() + 1e-12)
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-12)
    return np.concatenate([hist, [coherence, np.log(np.mean(hp * hp) + 1e-8)]])


def _mscn_stats(g: np.ndarray) -> np.ndarray:
    """NIQE's 18 AGGD features of the MSCN map, over one centred square covering most of the image."""
    from derainkit.metrics.niqe import block_features, mscn

    coeffs = mscn(g * 255.0)
    s = min(coeffs.shape)
    top, left = (coeffs.shape[0] - s) // 2, (coeffs.shape[1] - s) // 2
    return block_features(coeffs[top:top + s, left:left + s], s)[0]


def _blob_stats(g: np.ndarray) -> np.ndarray:
    """Bright-blob (drop, light) responses: mean positive −σ²·LoG and the fraction over 0.02, 3 scales."""
    out = []
    for sigma in (2.0, 4.0, 8.0):
        resp = np.maximum(-sigma * sigma * ndimage.gaussian_laplace(g, sigma), 0.0)
        out += [resp.mean(), (resp > 0.02).mean()]
    return np.asarray(out)


def rain_features(img: np.ndarray) -> np.ndarray:
    """Level 2 (and J2's input): the kit's fixed rain-cue encoder, 45 numbers (see the module docstring)."""
    g = _grey(img)
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)
    gy, gx = np.gradient(g)
    exposure = [g.mean(), g.std(), hsv[..., 1].mean(), (g < 0.15).mean(), (g > 0.9).mean(), np.hypot(gx, gy).mean()]
    return np.concatenate([_orientation_stats(g), _mscn_stats(g), _blob_stats(g), exposure]).astype(np.float64)


def _ssim_thumb(img: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(_grey(img), (side, side), interpolation=cv2.INTER_AREA)


def _niqe_blocks(img: np.ndarray) -> np.ndarray:
    from derainkit.metrics.niqe import niqe_features, to_gray

    return niqe_features(to_gray(img))


# ------------------------------------------------------------------------------------------- pair sanity

def _phase_shift(a: np.ndarray, b: np.ndarray) -> float:
    win = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, win)
    return float(np.hypot(dx, dy))


def pair_sanity_scores(rainy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """J3's sub-scores of a pair (both at work size).

    align_ssim     SSIM of the Gaussian-low-passed (σ 2) greys: the backgrounds agree
    shift          phase-correlation shift of the low-passed greys, pixels: 0 for an aligned pair
    colour_shift   spread over channels of median(residual_c) / (median(target_c) + 0.05): a channel gain
                   change moves the channels apart; grey rain and equal-channel noise do not (the median
                   ignores sparse rain, the 0.05 keeps dark night targets from inflating it)
    target_rain    correlation of the target's and the residual's high-pass (σ 1.5) over the 10 % of pixels
                   where the (smoothed) residual is largest: rain left in the target correlates with the
                   rain that was removed; a clean target does not (drops: it is negative)
    residual       mean |grey residual|: there is rain at all
    concentration  share of the residual's energy in its top 10 % pixels: rain is sparse, dense noise is not
    """
    from derainkit.metrics.protocols import ssim_wang_valid

    gi, gt = _grey(rainy), _grey(clean)
    li, lt = ndimage.gaussian_filter(gi, 2.0), ndimage.gaussian_filter(gt, 2.0)
    residual = (rainy.astype(np.float64) - clean).reshape(-1, 3)
    rel = np.median(residual, axis=0) / (np.median(clean.reshape(-1, 3), axis=0) + 0.05)
    rg = gi - gt
    smooth = ndimage.gaussian_filter(np.abs(rg), 1.0)  # |·| first: dense zero-mean noise stays dense
    support = smooth >= np.quantile(smooth, 0.9)
    hp_t, hp_r = (gt - ndimage.gaussian_filter(gt, 1.5))[support], (rg - ndimage.gaussian_filter(rg, 1.5))[support]
    corr = float(np.corrcoef(hp_t, hp_r)[0, 1]) if hp_r.std() > 0 and hp_t.std() > 0 else 0.0
    energy = np.sort(smooth.ravel() ** 2)[::-1]
    top = energy[: max(1, energy.size // 10)].sum() / (energy.sum() + 1e-12)
    return {"align_ssim": ssim_wang_valid(li, lt, data_range=1.0), "shift": _phase_shift(li, lt),
            "colour_shift": float(rel.max() - rel.min()), "target_rain": corr, "residual": float(np.abs(rg).mean()),
            "concentration": float(top)}


def pair_sanity_checks(scores: Mapping[str, float], cfg: DistillConfig) -> dict[str, bool]:
    return {"aligned": scores["shift"] <= cfg.max_shift and scores["align_ssim"] >= cfg.min_align_ssim,
            "no_colour_shift": scores["colour_shift"] <= cfg.max_colour_shift,
            "clean_target": scores["target_rain"] <= cfg.max_target_rain,
            "rain_like_residual": scores["residual"] >= cfg.min_residual
            and scores["concentration"] >= cfg.min_concentration}


# ------------------------------------------------------------------------------------------- inputs

@dataclass
class _Item:
    """The features of one image (a candidate's rainy input or a reference photo)."""

    id: str
    rain_type: str
    source: str
    corruption: Optional[str]
    clean_source: str
    desc: np.ndarray
    feats: np.ndarray
    thumb: np.ndarray
    niqe: np.ndarray
    sanity: dict = field(default_factory=dict)
    crops: Optional[np.ndarray] = None  # references: J2 positives


def _features(item_id: str, image: np.ndarray, cfg: DistillConfig, rain_type: str = "", source: str = "",
              corruption: Optional[str] = None, clean_source: str = "") -> tuple[_Item, np.ndarray]:
    img = _work(image, cfg.work_side)
    return _Item(item_id, rain_type, source, corruption, clean_source, appearance_descriptor(img), rain_features(img),
                 _ssim_thumb(img, cfg.ssim_side), _niqe_blocks(img)), img


def reference_items(references: Sequence[tuple[str, np.ndarray]] | PathLike, cfg: DistillConfig) -> list[_Item]:
    """Features of the real rainy photos (a folder, or (id, image) pairs), with seeded J2 crops."""
    if isinstance(references, (str, os.PathLike)):
        references = load_reference_folder(references)
    items = []
    for k, (rid, image) in enumerate(references):
        item, img = _features(rid, image, cfg, source=rid)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _TAG_CROPS, k]))
        side = cfg.work_side
        crops = []
        for _ in range(cfg.reference_crops):
            top = int(rng.integers(0, img.shape[0] - side + 1))
            left = int(rng.integers(0, img.shape[1] - side + 1))
            crops.append(rain_features(img[top:top + side, left:left + side]))
        item.crops = np.stack(crops)
        items.append(item)
    if len(items) < 2:
        raise DatasetError(f"the reference base needs at least 2 real rainy photos, got {len(items)}")
    return items


def load_reference_folder(folder: PathLike) -> list[tuple[str, np.ndarray]]:
    """(file name, image) of every image in a folder of real rainy photos, in natural order."""
    from derainkit.data.layouts import discover_pairs
    from derainkit.io import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: reference folder of real rainy photos not found")
    return [(p.rainy.name, read_image(p.rainy)) for p in discover_pairs(folder, layout="unpaired")]


def candidates_from_rain_types(root: PathLike, types: Optional[Sequence[str]] = None,
                               limit: Optional[int] = None) -> Iterator[Candidate]:
    """The pairs of a ``{type}/{input,target}`` folder as candidates (ids ``<type>/<name>``), loaded lazily."""
    from derainkit.data.layouts import load_pair
    from derainkit.data.rain_types import rain_type_pairs

    for t, pairs in rain_type_pairs(root, types).items():
        for pair in pairs[:limit] if limit else pairs:
            rainy, clean = load_pair(pair)
            yield Candidate(f"{t}/{pair.id}", t, rainy, clean, source=str(pair.rainy), clean_source=str(pair.clean))


def candidates_from_pairs(root: PathLike, rain_type: str = "drs", limit: Optional[int] = None,
                          layout: str = "auto") -> Iterator[Candidate]:
    """The pairs of any paired folder the kit reads (Rain100L: ``rain/`` + ``norain/``) as ``rain_type``."""
    from derainkit.data.layouts import discover_pairs, load_pair

    pairs = discover_pairs(root, layout=layout)
    for pair in pairs[:limit] if limit else pairs:
        rainy, clean = load_pair(pair)
        if clean is None:
            raise DatasetError(f"{pair.rainy}: a candidate needs its clean target")
        yield Candidate(f"{rain_type}/{pair.id}", rain_type, rainy, clean, source=str(pair.rainy),
                        clean_source=str(pair.clean) if not pair.is_side_by_side else "")


def candidate_items(candidates: Iterable[Candidate], cfg: DistillConfig) -> list[_Item]:
    """Features and pair-sanity scores of every candidate; the images are not kept."""
    items, seen = [], set()
    for cand in candidates:
        if cand.id in seen:
            raise DatasetError(f"two candidates share the id {cand.id!r}")
        seen.add(cand.id)
        if cand.rainy.shape != cand.clean.shape:
            raise DatasetError(f"candidate {cand.id}: input {cand.rainy.shape} and target {cand.clean.shape} differ")
        item, img = _features(cand.id, cand.rainy, cfg, cand.rain_type, cand.source, cand.corruption,
                              cand.clean_source)
        item.sanity = pair_sanity_scores(img, _work(cand.clean, cfg.work_side))
        items.append(item)
    if not items:
        raise DatasetError("no candidate pairs to distil")
    return items


# ------------------------------------------------------------------------------------------- retrieval

def _zscore(refs: Sequence[_Item], cands: Sequence[_Item]) -> tuple[np.ndarray, np.ndarray]:
    pool = np.stack([i.feats for i in list(refs) + list(cands)])
    mu, sd = pool.mean(axis=0), pool.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return mu, sd


def retrieve(item: _Item, refs: Sequence[_Item], cfg: DistillConfig, mu: np.ndarray, sd: np.ndarray) -> dict:
    """Three-level cascade: L2 on the appearance descriptor (K1), cosine on the z-scored level-2 features
    (K2), SSIM of the grey thumbnails (K3); ties go to the earlier reference."""
    from derainkit.metrics.protocols import ssim_wang_valid

    k1, k2, k3 = (min(k, len(refs)) for k in (cfg.k1, cfg.k2, cfg.k3))
    d1 = np.array([np.linalg.norm(item.desc - r.desc) for r in refs])
    level1 = list(np.argsort(d1, kind="stable")[:k1])
    q = (item.feats - mu) / sd
    cos = {j: float(q @ ((refs[j].feats - mu) / sd) / (np.linalg.norm(q) * np.linalg.norm((refs[j].feats - mu) / sd)
                                                       + 1e-12)) for j in level1}
    level2 = sorted(level1, key=lambda j: (-cos[j], j))[:k2]
    ssim = {j: ssim_wang_valid(item.thumb, refs[j].thumb, data_range=1.0) for j in level2}
    level3 = sorted(level2, key=lambda j: (-ssim[j], j))[:k3]
    return {"level1": [[refs[j].id, float(d1[j])] for j in level1], "level2": [[refs[j].id, cos[j]] for j in level2],
            "level3": [[refs[j].id, ssim[j]] for j in level3], "refs": [int(j) for j in level3]}


# ------------------------------------------------------------------------------------------- judges

def _mvg(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    complete = blocks[~np.isnan(blocks).any(axis=1)]
    mu = complete.mean(axis=0)
    centred = complete - mu
    return mu, centred.T @ centred / max(complete.shape[0] - 1, 1)


def nss_distances(cands: Sequence[_Item], refs: Sequence[_Item], retrieved: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """J1: each candidate's NIQE-style distance to the MVG of its S(q); and each reference's distance to the
    MVG of the other references (the reference-to-reference distribution)."""
    from derainkit.metrics.niqe import mvg_distance

    d = np.array([mvg_distance(c.niqe, *_mvg(np.concatenate([refs[j].niqe for j in r["refs"]])))
                  for c, r in zip(cands, retrieved)])
    ref_d = np.array([mvg_distance(r.niqe, *_mvg(np.concatenate([o.niqe for o in refs if o is not r])))
                      for r in refs])
    return d, ref_d


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 100) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method, classes weighted equally; returns [w, b]."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    sw = np.where(y > 0, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum())) * x.shape[0]
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0  # no penalty on the bias
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (sw * (p - y)) + penalty * w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def real_probabilities(cands: Sequence[_Item], refs: Sequence[_Item], cfg: DistillConfig) -> tuple[np.ndarray, np.ndarray]:
    """J2: cross-fitted P(real) of each candidate (a model trained on the references' crops and the
    candidates of the other folds) and the fold each candidate was scored in."""
    pos = np.concatenate([r.crops for r in refs])
    neg = np.stack([c.feats for c in cands])
    n = len(cands)
    folds = np.empty(n, np.int64)
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, _TAG_FOLDS])).permutation(n)
    folds[order] = np.arange(n) % min(cfg.j2_folds, n)
    prob = np.zeros(n)
    for f in np.unique(folds):
        train_neg = neg[folds != f] if (folds != f).any() else neg[:0]
        x = np.concatenate([pos, train_neg])
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        w = _logistic((x - mu) / sd, np.r_[np.ones(len(pos)), np.zeros(len(train_neg))], cfg.j2_l2)
        z = np.hstack([(neg[folds == f] - mu) / sd, np.ones(((folds == f).sum(), 1))]) @ w
        prob[folds == f] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return prob, folds


def _budget_threshold(scores: np.ndarray, keep: float, higher_is_better: bool) -> float:
    """The score at which the best ``keep`` fraction of the finite scores passes."""
    finite = np.sort(scores[np.isfinite(scores)])
    if finite.size == 0:
        return float("nan")
    if higher_is_better:
        finite = finite[::-1]
    return float(finite[max(0, int(np.ceil(keep * finite.size)) - 1)])


# ------------------------------------------------------------------------------------------- the filter

def distill(candidates: Iterable[Candidate], references: Sequence[tuple[str, np.ndarray]] | PathLike,
            config: DistillConfig | None = None) -> "KeepList":
    """Score every candidate (retrieval, three judges, vote) and return the keep-list."""
    cfg = config or DistillConfig()
    refs = reference_items(references, cfg)
    cands = candidate_items(candidates, cfg)
    mu, sd = _zscore(refs, cands)
    retrieved = [retrieve(c, refs, cfg, mu, sd) for c in cands]
    j1_d, ref_d = nss_distances(cands, refs, retrieved)
    j1_thr = _budget_threshold(j1_d, cfg.j1_keep, higher_is_better=False)
    j1_ref_thr = float(np.percentile(ref_d[np.isfinite(ref_d)], cfg.j1_percentile)) if np.isfinite(ref_d).any() else float("nan")
    j2_p, folds = real_probabilities(cands, refs, cfg)
    j2_thr = _budget_threshold(j2_p, cfg.j2_keep, higher_is_better=True)
    rows = [_row(c, r, cfg, float(d), j1_thr, j1_ref_thr, float(p), j2_thr, int(f))
            for c, r, d, p, f in zip(cands, retrieved, j1_d, j2_p, folds)]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "references": [r.id for r in refs], "reference_nss_distances": [float(v) for v in ref_d],
            "thresholds": {"j1_budget": j1_thr, "j1_reference_percentile": j1_ref_thr, "j2_budget": j2_thr},
            "substitutions": "see derainkit.data.distill (module docstring)"}
    return KeepList(rows=rows, meta=meta)


def _row(c: _Item, r: dict, cfg: DistillConfig, d: float, j1_thr: float, j1_ref_thr: float, p: float,
         j2_thr: float, fold: int) -> dict[str, Any]:
    checks = pair_sanity_checks(c.sanity, cfg)
    j1, j2, j3 = bool(np.isfinite(d) and d <= j1_thr), bool(p >= j2_thr), all(checks.values())
    votes = int(j1) + int(j2) + int(j3)
    keep = {"2of3": votes >= 2, "sanity_veto": j3 and votes >= 2}
    chosen = {x[0] for x in r["level3"]}  # S(q): the level scores below are means over it
    row: dict[str, Any] = {
        "id": c.id, "rain_type": c.rain_type, "source": c.source, "clean_source": c.clean_source,
        "corruption": c.corruption or "",
        "refs": ";".join(x[0] for x in r["level3"]),
        "l1_distance": float(np.mean([x[1] for x in r["level1"] if x[0] in chosen])),
        "l2_cosine": float(np.mean([x[1] for x in r["level2"] if x[0] in chosen])),
        "l3_ssim": float(np.mean([x[1] for x in r["level3"]])),
        "j1_distance": d, "j1_threshold": j1_thr, "j1_reference_threshold": j1_ref_thr, "j1_vote": j1,
        "j2_p_real": p, "j2_threshold": j2_thr, "j2_fold": fold, "j2_vote": j2}
    row.update({f"j3_{k}": float(v) for k, v in c.sanity.items()})
    row.update({f"j3_{k}": v for k, v in checks.items()})
    row.update({"j3_vote": j3, "votes": votes, "keep_2of3": keep["2of3"], "keep_sanity_veto": keep["sanity_veto"],
                "keep": keep[cfg.rule], "retrieval": {k: r[k] for k in ("level1", "level2", "level3")}})
    return row


@dataclass
class KeepList:
    """The distilled keep-list: one row per candidate (every score and vote), plus the run's metadata."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def kept(self) -> list[str]:
        return [r["id"] for r in self.rows if r["keep"]]

    @property
    def version(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of config and rows: the same version means
        the same decisions from the same scores."""
        text = json.dumps({"config": self.meta.get("config"), "rows": self.rows}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "version": self.version, "kept": len(self.kept), "total": len(self.rows),
                "rows": self.rows}

    def csv_text(self) -> str:
        cols = [k for k in self.rows[0] if k != "retrieval"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
        return buf.getvalue()

    def write(self, stem: PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.json`` (everything) and ``<stem>.csv`` (one flat row per candidate)."""
        from derainkit.fsutil import atomic_write_text

        stem = Path(stem)
        js, cs = stem.with_suffix(".json"), stem.with_suffix(".csv")
        atomic_write_text(js, json.dumps(self.to_json(), indent=1, sort_keys=True, default=float) + "\n")
        atomic_write_text(cs, f"# {FORMAT} v{FORMAT_VERSION} version {self.version}\n" + self.csv_text())
        return js, cs

    @classmethod
    def read(cls, path: PathLike) -> "KeepList":
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise DatasetError(f"{path}: not a distillation keep-list (format {data.get('format')!r})")
        rows = data.pop("rows")
        for key in ("version", "kept", "total"):
            data.pop(key, None)
        return cls(rows=rows, meta=data)


def write_kept_layout(keeplist: KeepList, out_root: PathLike, which: str = "kept") -> Path:
    """Copy the pairs of a keep-list into the ``{type}/{input,target}`` layout the UniRain task trains on:
    ``which="kept"`` the distilled set, ``"all"`` the naive mix of the whole pool (the paper's baseline),
    ``"rejected"`` the rest. Pairs are copied from the files recorded in the rows (PNG as is, others
    re-encoded losslessly); a keep-list of a corrupted validation pool is refused (its images were
    altered in memory). Returns ``out_root``."""
    import shutil

    from derainkit.io import read_image, write_image

    if which not in ("kept", "all", "rejected"):
        raise ConfigError(f"which={which!r}: expected kept, all or rejected")
    if any(r["corruption"] for r in keeplist.rows):
        raise DatasetError("this keep-list scored a corrupted validation pool; distil the untouched pool to train on it")
    out = Path(out_root)
    for r in keeplist.rows:
        if (which == "kept" and not r["keep"]) or (which == "rejected" and r["keep"]):
            continue
        name = r["id"].split("/", 1)[-1]
        for side, src in (("input", r["source"]), ("target", r["clean_source"])):
            if not src or not Path(src).is_file():
                raise DatasetError(f"keep-list row {r['id']}: its {side} file {src!r} is not available")
            dst = out / r["rain_type"] / side / f"{name}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if Path(src).suffix.lower() == ".png":
                shutil.copyfile(src, dst)
            else:
                write_image(dst, read_image(src))
    return out


# ------------------------------------------------------------------------------------------- validation

def corrupt_pair(rainy: np.ndarray, clean: np.ndarray, kind: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """A damaged copy of a pair: ``misaligned`` (target shifted 3-10 px), ``rain_in_target`` (40-80 % of the
    rain left in the target), ``uniform_noise`` (the input's rain replaced by dense uniform noise),
    ``colour_shift`` (target channel gains 1 ± 10-25 %, red and blue opposite)."""
    rainy, clean = np.asarray(rainy, np.float32), np.asarray(clean, np.float32)
    if kind == "misaligned":
        dy, dx = (int(rng.integers(3, 11)) * (1 if rng.random() < 0.5 else -1) for _ in range(2))
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(clean, m, (clean.shape[1], clean.shape[0]), borderMode=cv2.BORDER_REFLECT)
        return rainy, out, {"dy": dy, "dx": dx}
    if kind == "rain_in_target":
        beta = float(0.4 + 0.4 * rng.random())
        return rainy, np.clip(clean + beta * (rainy - clean), 0, 1), {"beta": beta}
    if kind == "uniform_noise":
        a = float(0.1 + 0.15 * rng.random())
        noise = rng.uniform(-a, a, size=clean.shape[:2])[:, :, None].astype(np.float32)
        return np.clip(clean + noise, 0, 1), clean, {"amplitude": a}
    if kind == "colour_shift":
        s = 1.0 if rng.random() < 0.5 else -1.0
        gains = np.array([1 + s * (0.1 + 0.15 * rng.random()), 1.0, 1 - s * (0.1 + 0.15 * rng.random())], np.float32)
        return rainy, np.clip(clean * gains, 0, 1), {"gains": gains.tolist()}
    raise ConfigError(f"unknown corruption {kind!r}; expected one of {list(CORRUPTIONS)}")


def corrupt_candidates(candidates: Iterable[Candidate], fraction: float = 0.25, seed: int = 0,
                       kinds: Sequence[str] = CORRUPTIONS) -> Iterator[Candidate]:
    """The candidates with a seeded ``fraction`` of them corrupted (kind drawn uniformly from ``kinds``)."""
    for k, cand in enumerate(candidates):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_CORRUPT, k]))
        if rng.random() >= fraction:
            yield cand
            continue
        kind = kinds[int(rng.integers(0, len(kinds)))]
        rainy, clean, _ = corrupt_pair(cand.rainy, cand.clean, kind, rng)
        yield Candidate(cand.id, cand.rain_type, rainy, clean, cand.source, corruption=kind,
                        clean_source=cand.clean_source)


def _pr(rejected: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    tp = int((rejected & corrupted).sum())
    return {"precision": tp / max(1, int(rejected.sum())), "recall": tp / max(1, int(corrupted.sum())),
            "rejected": int(rejected.sum()), "clean_kept": float((~rejected & ~corrupted).sum() / max(1, (~corrupted).sum()))}


def evaluate_filter(keeplist: KeepList) -> dict[str, Any]:
    """Precision and recall of rejection (positives: corrupted rows), per vote rule, per judge and per kind."""
    rows = keeplist.rows
    corrupted = np.array([bool(r["corruption"]) for r in rows])
    kinds = sorted({r["corruption"] for r in rows if r["corruption"]})
    report: dict[str, Any] = {"pool": len(rows), "corrupted": int(corrupted.sum()),
                              "by_kind": {k: sum(r["corruption"] == k for r in rows) for k in kinds}, "rules": {},
                              "judges": {}, "by_type": {}}
    columns = {"rules": {"2of3": "keep_2of3", "sanity_veto": "keep_sanity_veto"},
               "judges": {"J1": "j1_vote", "J2": "j2_vote", "J3": "j3_vote"}}
    for group, cols in columns.items():
        for name, col in cols.items():
            rejected = np.array([not r[col] for r in rows])
            entry = _pr(rejected, corrupted)
            entry["recall_by_kind"] = {k: float(np.mean([not r[col] for r in rows if r["corruption"] == k]))
                                       for k in kinds}
            report[group][name] = entry
    for t in sorted({r["rain_type"] for r in rows}):
        sub = [r for r in rows if r["rain_type"] == t]
        report["by_type"][t] = {"pairs": len(sub), "kept": sum(r["keep"] for r in sub),
                                "clean_kept": float(np.mean([r["keep"] for r in sub if not r["corruption"]] or [0]))}
    return report


def validate_filter(candidates: Iterable[Candidate], references: Sequence[tuple[str, np.ndarray]] | PathLike,
                    config: DistillConfig | None = None, fraction: float = 0.25,
                    seed: int = 0) -> tuple[dict[str, Any], KeepList]:
    """Corrupt a seeded ``fraction`` of the pool, distil it, and report precision/recall of the rejections."""
    keeplist = distill(corrupt_candidates(candidates, fraction, seed), references, config)
    report = evaluate_filter(keeplist)
    report["fraction"], report["seed"], report["keeplist_version"] = fraction, seed, keeplist.version
    return report, keeplist


# ------------------------------------------------------------------------------------------- reproduction

def rain100l_pool(pairs_root: PathLike, work_dir: PathLike, start: int = 0, count: int = 40,
                  generated: Sequence[str] = ("drd", "nrs", "nrd"), seed: int = 0) -> Iterator[Candidate]:
    """A validation pool: ``count`` real Rain100L-style pairs (from position ``start``, as ``drs``) plus the
    ``generated`` types rendered from the same pairs' clean images into ``work_dir`` (see rain_types)."""
    from derainkit.data.layouts import discover_pairs, load_pair
    from derainkit.data.rain_types import make_rain_types

    pairs = discover_pairs(pairs_root)[start:start + count]
    if not pairs:
        raise DatasetError(f"{pairs_root}: no pairs from position {start}")
    work = Path(work_dir)
    if generated:
        make_rain_types([p.clean for p in pairs], work, types=tuple(generated), seed=seed)
    for pair in pairs:
        rainy, clean = load_pair(pair)
        yield Candidate(f"drs/{pair.id}", "drs", rainy, clean, source=str(pair.rainy), clean_source=str(pair.clean))
    if generated:
        yield from candidates_from_rain_types(work, generated)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m derainkit.data.distill --pairs <paired folder> --refs <real photos> --out <dir>``:
    build a pool (real pairs + generated types), corrupt a fraction, distil, print precision/recall."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m derainkit.data.distill", description=main.__doc__)
    ap.add_argument("--pairs", required=True, help="paired folder (e.g. ../shared/data/rain100l/train)")
    ap.add_argument("--refs", required=True, help="folder of real rainy photos (the reference base)")
    ap.add_argument("--out", required=True, help="where the generated types and the keep-list go")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="DistillConfig key=value (e.g. k1=5)")
    args = ap.parse_args(argv)
    from derainkit.strictconfig import load_yaml

    overrides = {k: load_yaml(v, f"--set {k}") for k, _, v in (s.partition("=") for s in args.set)}
    cfg = DistillConfig.from_dict({"seed": args.seed, **overrides})
    out = Path(args.out)
    pool = rain100l_pool(args.pairs, out / "generated", args.start, args.count, seed=args.seed)
    report, keeplist = validate_filter(pool, args.refs, cfg, fraction=args.fraction, seed=args.seed)
    keeplist.write(out / "keeplist")
    report["command"] = " ".join(["python -m derainkit.data.distill", *(argv or [])])
    from derainkit.fsutil import atomic_write_text

    atomic_write_text(out / "validation.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
