"""Windowed kNN (MSGNN's 30×30 search window): derainkit's blocked local GEMM vs the gather formulation.

The gather formulation is what the official `matmul_cuda.matmul1` kernel computes, written in torch: build
the int64 window index I (m×o) of `index_neighbours`, then per chunk of queries gather cand[I] (chunk×o×e),
take dot products, add the norms, topk. Inputs are MSGNN-like: 32-channel embeddings of a synthetic image
from a random 3-layer conv net (3→32→32→32, LeakyReLU 0.2), l = s = 3 patches (e = 288), k = 5, window 30.
- rule msgnn, scale 2: candidates from the ½-resolution image (a real sliding window);
- rule msgnn, scale 1: candidates from the same image through a second random net (the top-left-shifted
  official window).
Timings are medians of interleaved rounds (3 of ours, 2 of the gather, which runs for tens of seconds);
above 600² the gather is timed on a fixed band of query rows and extrapolated linearly (its cost is the
same for every query), which the `timing` column says. Peak extra memory is measured in a fresh subprocess as the
run phase's VmHWM − VmRSS (for the gather on the row band: its peak is the full m×o index I plus one chunk).
Machine load (1-minute load average) is recorded before and after each size: on a shared machine it moves
the timings a lot.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import (device_name, loadavg, peak_extra_mb, peak_rss_in_subprocess, reset_peak_rss, status_kb,
                          time_it, write_csv)

C, L, S_, K, WIN = 32, 3, 3, 5, 30
SIZES_FULL = [256, 512, 1024]
SIZES_QUICK = [128, 256]
CASES = [("msgnn", 2), ("msgnn", 1)]
GATHER_CHUNK = 256
GATHER_SUBSET_ABOVE = 600  # feature maps larger than this: time the gather on a band of query rows
GATHER_BAND_ROWS = 32


def _embed(img: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = img
    for cin in (3, C, C):
        w = torch.randn(C, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5
        h = F.leaky_relu(F.conv2d(h, w, padding=1), 0.2)
    return h


def _features(size: int, scale: int):
    """(query patches 1×m×e, cand patches 1×n×e, query grid, cand grid) for a size×size map."""
    from derainkit.knn import extract_patches

    g = torch.Generator().manual_seed(size)
    low = torch.rand(1, 3, size // 16 + 1, size // 16 + 1, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    img = img + 0.05 * torch.randn(1, 3, size, size, generator=g)
    with torch.no_grad():
        fq = _embed(img, 1)
        cimg = img if scale == 1 else F.avg_pool2d(img, scale, ceil_mode=True)
        fc = _embed(cimg, 2)
        q, qg = extract_patches(fq, L, S_)
        x, cg = extract_patches(fc, L, S_)
    return q, x, qg, cg


def gather_knn(q: torch.Tensor, x: torch.Tensor, k: int, qg, cg, window, rows: tuple[int, int] | None = None,
               chunk: int = GATHER_CHUNK) -> torch.Tensor:
    """The official gather formulation (b = 1): full m×o int64 index I, chunked gather + dot products.

    rows=(r0, r1) restricts the work to query rows r0..r1-1 of the query grid (I is still built in full).
    Returns neighbour indices (#queries × k).
    """
    from derainkit.knn import window_index

    q, x = q[0], x[0]
    I = window_index(qg, cg, window)  # m × o int64, as index_neighbours builds it
    xn = (x * x).sum(-1)
    q0, q1 = (0, q.shape[0]) if rows is None else (rows[0] * qg[1], rows[1] * qg[1])
    out = torch.empty(q1 - q0, k, dtype=torch.int64)
    for c0 in range(q0, q1, chunk):
        c1 = min(q1, c0 + chunk)
        Ic = I[c0:c1]
        xs = x[Ic]  # chunk × o × e
        qc = q[c0:c1]
        dots = torch.bmm(xs, qc[:, :, None]).squeeze(2)
        D = xn[Ic] - 2 * dots + (qc * qc).sum(-1, keepdim=True) + 1e-5
        _, p = D.topk(k, dim=1, largest=False, sorted=True)
        out[c0 - q0:c1 - q0] = Ic.gather(1, p)
    return out


def _ours(q, x, qg, cg, window) -> torch.Tensor:
    from derainkit.knn import knn
    return knn(q, x, K, query_grid=qg, cand_grid=cg, window=window, eps=1e-5)[1][0]


def _band(qg) -> tuple[int, int] | None:
    r0 = max(0, qg[0] // 2 - GATHER_BAND_ROWS // 2)
    return r0, min(qg[0], r0 + GATHER_BAND_ROWS)


def _mem_target(method: str, size: int, rule: str, scale: int, subset: bool, phase: str, prepared=None):
    """Module-level (picklable) target for peak_rss_in_subprocess."""
    from derainkit.knn import Window

    window = Window(WIN, rule, scale)
    if phase == "prepare":
        q, x, qg, cg = _features(size, scale)
        q2, x2, qg2, cg2 = _features(64, scale)  # warm up libraries outside the measured phase
        _ours(q2, x2, qg2, cg2, window)
        gather_knn(q2, x2, K, qg2, cg2, window)
        del q2, x2
        reset_peak_rss()
        return q, x, qg, cg, status_kb("VmRSS")
    q, x, qg, cg, rss0 = prepared
    if method == "derainkit":
        _ours(q, x, qg, cg, window)
    else:
        gather_knn(q, x, K, qg, cg, window, rows=_band(qg) if subset else None)
    hwm = status_kb("VmHWM")
    return None if hwm is None or rss0 is None else (hwm - rss0) / 1024


def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.knn import Window

    rounds = 2 if quick else 3
    gather_rounds = 1 if quick else 2  # the gather takes 10–60 s per call here
    rows = []
    for rule, scale in CASES:
        window = Window(WIN, rule, scale)
        t_ours: dict[int, float] = {}
        t_gather: dict[int, float] = {}
        for size in (SIZES_QUICK if quick else SIZES_FULL):
            q, x, qg, cg = _features(size, scale)
            m = q.shape[1]
            subset = size > GATHER_SUBSET_ABOVE
            band = _band(qg) if subset else None
            load_before = loadavg()
            ours_idx = _ours(q, x, qg, cg, window)  # warm-up
            # interleaved rounds (ours, gather, ours, gather, ...): load changes hit both alike
            t_o, t_g, g_idx = [], [], None
            for r in range(rounds):
                t_o.append(time_it(lambda: _ours(q, x, qg, cg, window), repeats=1, warmup=0))
                if r < gather_rounds:
                    t0 = time.perf_counter()
                    g_idx = gather_knn(q, x, K, qg, cg, window, rows=band)
                    t_g.append(time.perf_counter() - t0)
            n_timed = g_idx.shape[0]
            t_ours[size] = statistics.median(t_o)
            t_gather[size] = statistics.median(t_g) * m / n_timed
            q0 = band[0] * qg[1] if band else 0
            ours_sub = ours_idx[q0:q0 + n_timed].sort(1).values
            agree = (ours_sub == g_idx.sort(1).values).all(1).float().mean().item()
            timing_note = (f"extrapolated from {n_timed} of {m} queries (rows {band[0]}-{band[1] - 1})"
                           if subset else "full")
            mem = {}
            for meth in ("derainkit", "gather"):
                try:
                    # the gather's peak is its full I plus one chunk: the row band shows it at a fraction of the time
                    sub = subset if meth == "derainkit" else True
                    mem[meth] = peak_extra_mb(peak_rss_in_subprocess(_mem_target, meth, size, rule, scale, sub))
                except RuntimeError as exc:
                    print(f"   peak memory of {meth} failed: {exc}")
                    mem[meth] = float("nan")
            common = {"feature_map": f"{size}x{size}x{C}", "size": size, "query_grid": f"{qg[0]}x{qg[1]}",
                      "cand_grid": f"{cg[0]}x{cg[1]}", "rule": rule, "scale": scale, "window": WIN, "k": K,
                      "e": q.shape[2], "m": m}
            load_after = loadavg()
            for meth, secs in (("derainkit", t_ours[size]), ("gather", t_gather[size])):
                rows.append({**common, "method": meth, "seconds": round(secs, 4),
                             "speedup_vs_gather": round(t_gather[size] / secs, 2),
                             "peak_extra_mb": round(mem[meth], 1),
                             "agreement": round(agree, 6) if meth == "derainkit" else 1.0,
                             "timing": (f"median of {rounds} rounds" if meth == "derainkit"
                                        else f"median of {gather_rounds} rounds, {timing_note}"),
                             "loadavg_1m_before": load_before, "loadavg_1m_after": load_after,
                             "device": device_name("cpu")})
            print(f"   {size}² {rule}/{scale}: ours {t_ours[size]:.3f} s, gather {t_gather[size]:.2f} s "
                  f"({timing_note}), speedup {t_gather[size] / t_ours[size]:.1f}x, agreement {agree:.5f}, "
                  f"mem {mem}", flush=True)
        for r in rows:  # linear scaling means time ratio == pixel ratio
            if r["rule"] == rule and r["scale"] == scale:
                t = t_ours if r["method"] == "derainkit" else t_gather
                r["scaling_vs_512"] = round(t[r["size"]] / t[512], 3) if 512 in t else ""
                r["pixels_vs_512"] = round(r["size"] ** 2 / 512 ** 2, 3)
    name = "knn_windowed_quick.csv" if quick else "knn_windowed.csv"
    return [write_csv(out_dir / name, rows)]


def summarize(paths: list[Path]) -> str:
    import csv

    lines = ["## Windowed kNN (window 30, k=5, e=288): blocked local GEMM vs gather formulation", "",
             "| feature map | rule/scale | method | seconds | speedup vs gather | time vs 512² "
             "(pixels ×) | peak extra MB | agreement | timing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        with open(p) as fh:
            for r in csv.DictReader(fh):
                lines.append(f"| {r['feature_map']} | {r['rule']}/{r['scale']} | {r['method']} | {r['seconds']} | "
                             f"{r['speedup_vs_gather']} | {r.get('scaling_vs_512', '')} "
                             f"({r.get('pixels_vs_512', '')}) | {r['peak_extra_mb']} | {r['agreement']} | "
                             f"{r['timing']} |")
    lines.append("")
    lines.append("Time vs 512²: linear scaling means it equals the pixel ratio in brackets. The 1-minute load "
                 "average is in the CSV; on a busy machine the many small parallel ops of the blocked search "
                 "suffer more than the gather's few large ones.")
    return "\n".join(lines)
