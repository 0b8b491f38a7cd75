"""NIQE (derainkit.metrics.niqe): seconds per image at 0.2, 1 and 12 megapixels, against a per-block loop.

Rows (results/bench/niqe.csv), all measured in this process on the same photo-like images (colour
1/f-spectrum noise, the power law of natural scenes; content barely changes the cost):

  impl=kit       the kit's vectorised NIQE (all blocks and all five AGGD fits of a scale at once)
  impl=loop      the baseline: the LIVE release's structure written literally in Python, one block at a
                 time and one fit at a time with the exhaustive search over the 9,801-point α grid
                 (``blkproc`` + ``estimateaggdparam``); it shares the kit's MSCN and imresize, so the
                 ratio measures the feature extraction the kit vectorises

``speedup_vs_loop`` is the loop's seconds over the kit's; ``abs_diff_vs_loop`` checks both give the same
score. ``peak_mb`` is the kit's peak numpy allocation (tracemalloc, an untimed extra call). The acceptance
target is 1 MP under 2 s on the 2-core CPU. ``--quick`` measures 0.2 MP only.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from bench.common import device_name, loadavg, time_it, write_csv

SIZES = {"0.2MP": (384, 512), "1MP": (1024, 1024), "1MP-photo": (800, 1280), "12MP": (3000, 4000)}


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """H×W×3 float RGB in [0, 1] with a 1/f amplitude spectrum and correlated channels."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1.0
    base = [np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f, s=(h, w)) for _ in range(3)]
    rgb = np.stack([base[0] + 0.3 * base[1], base[0] + 0.3 * base[2], base[0] - 0.2 * base[1]], axis=2)
    return (rgb - rgb.min()) / (rgb.max() - rgb.min())


# ----------------------------------------------------------------------------- the loop baseline
def _aggd_loop(vec: np.ndarray) -> tuple[float, float, float]:
    """One AGGD fit, as the release's estimateaggdparam: scalar statistics, exhaustive grid search."""
    from derainkit.metrics.niqe import _alpha_grid

    alpha, r_gam, beta_factor, _ = _alpha_grid()
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.mean(vec[vec < 0] ** 2)) if (vec < 0).any() else np.nan
        right = np.sqrt(np.mean(vec[vec > 0] ** 2)) if (vec > 0).any() else np.nan
        g = left / right
        rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec ** 2)
        rnorm = (rhat * (g ** 3 + 1) * (g + 1)) / ((g ** 2 + 1) ** 2)
    k = 0 if np.isnan(rnorm) else int(np.argmin((r_gam - rnorm) ** 2))
    return alpha[k], left * beta_factor[k], right * beta_factor[k]


def _block_loop(block: np.ndarray) -> list[float]:
    from derainkit.metrics.niqe import _SHIFTS
    from scipy.special import gamma

    a, bl, br = _aggd_loop(block.ravel())
    feat = [a, (bl + br) / 2]
    for shift in _SHIFTS:
        a, bl, br = _aggd_loop((block * np.roll(block, shift, axis=(0, 1))).ravel())
        feat += [a, (br - bl) * gamma(2 / a) / gamma(1 / a), bl, br]
    return feat


def niqe_loop(image: np.ndarray) -> float:
    """NIQE with a Python loop over blocks (the baseline); same conversions and model as the kit's."""
    from derainkit.metrics.niqe import BLOCK, imresize_matlab, mscn, mvg_distance, pristine_params, to_gray

    gray = to_gray(image)
    img = gray[: gray.shape[0] // BLOCK * BLOCK, : gray.shape[1] // BLOCK * BLOCK]
    scales = []
    for scale in (1, 2):
        coeffs = mscn(img)
        b = BLOCK // scale
        scales.append([_block_loop(coeffs[i:i + b, j:j + b])
                       for i in range(0, coeffs.shape[0], b) for j in range(0, coeffs.shape[1], b)])
        img = imresize_matlab(img, 0.5)
    return mvg_distance(np.concatenate([np.array(s) for s in scales], axis=1), *pristine_params())


# ----------------------------------------------------------------------------- the benchmark
def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.metrics.niqe import niqe

    rows = []
    sizes = {"0.2MP": SIZES["0.2MP"]} if quick else SIZES
    for label, (h, w) in sizes.items():
        img = photo_like(h, w)
        score = niqe(img)
        kit_s = time_it(lambda: niqe(img), repeats=3, warmup=0)
        loop_score = niqe_loop(img)
        loop_s = time_it(lambda: niqe_loop(img), repeats=1, warmup=0)
        peak = _peak_mb(lambda: niqe(img))
        common = {"size": label, "height": h, "width": w, "device": device_name("cpu"), "loadavg": loadavg()}
        rows.append({**common, "impl": "kit", "seconds": round(kit_s, 3), "speedup_vs_loop": round(loop_s / kit_s, 1),
                     "score": round(score, 6), "abs_diff_vs_loop": f"{abs(score - loop_score):.1e}",
                     "peak_mb": round(peak, 1)})
        rows.append({**common, "impl": "loop", "seconds": round(loop_s, 3), "speedup_vs_loop": 1.0,
                     "score": round(loop_score, 6), "abs_diff_vs_loop": "0", "peak_mb": ""})
        print(f"   {label} {w}×{h}: kit {kit_s:.3f} s, loop {loop_s:.2f} s ({loop_s / kit_s:.0f}×), "
              f"NIQE {score:.4f} (|Δ| {abs(score - loop_score):.1e}), peak {peak:.0f} MB", flush=True)
    path = out_dir / ("niqe-quick.csv" if quick else "niqe.csv")
    write_csv(path, rows)
    return [path]


def summarize(paths: list[Path]) -> str:
    import csv

    rows = list(csv.DictReader(paths[0].open()))
    lines = ["## NIQE per image (target: 1 MP under 2 s on the 2-core CPU)", "",
             "| size | impl | seconds | speed-up vs loop | NIQE | abs. diff vs loop | peak MB | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} ({r['width']}×{r['height']}) | {r['impl']} | {r['seconds']} | "
                     f"{r['speedup_vs_loop']} | {r['score']} | {r['abs_diff_vs_loop']} | {r['peak_mb']} | {r['loadavg']} |")
    return "\n".join(lines)
