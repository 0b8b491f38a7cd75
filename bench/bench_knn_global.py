"""Global exact kNN: derainkit.knn (torch backend) vs torch.cdist + topk vs faiss.knn.

Same random inputs (m = n queries/candidates, e = 288, k = 5) for every method, one process; timings are
interleaved (one call of each method per round, median over rounds) so a change in machine load hits all
methods alike. Peak extra memory is measured per method in a fresh subprocess (run phase's VmHWM − VmRSS).
`agreement` is the fraction of queries whose neighbour set equals derainkit's. The 1-minute load average is
recorded: on a shared machine it moves the timings a lot.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from bench.common import (device_name, loadavg, peak_extra_mb, peak_rss_in_subprocess, reset_peak_rss, status_kb,
                          time_it, write_csv)

E, K = 288, 5
SIZES_FULL = [4096, 16384]
SIZES_QUICK = [2048]


def _have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _inputs(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, E, generator=g), torch.randn(n, E, generator=g)


def _run_method(method: str, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Neighbour indices m×K of `method` on q (m×e), x (n×e)."""
    if method == "derainkit":
        from derainkit.knn import knn
        return knn(q[None], x[None], K, backend="torch")[1][0]
    if method == "derainkit-faiss":
        from derainkit.knn import knn
        return knn(q[None], x[None], K, backend="faiss")[1][0]
    if method == "cdist+topk":
        return torch.cdist(q, x).topk(K, dim=1, largest=False).indices
    if method == "faiss.knn":
        import faiss
        return torch.from_numpy(faiss.knn(q.numpy(), x.numpy(), K)[1])
    raise ValueError(method)


def _mem_target(method: str, m: int, n: int, phase: str, prepared=None):
    """Module-level (picklable) target for peak_rss_in_subprocess."""
    if phase == "prepare":
        q, x = _inputs(m, n)
        _run_method(method, q[:64], x[:256])  # load libraries / thread pools outside the measured phase
        reset_peak_rss()
        return q, x, status_kb("VmRSS")
    q, x, rss0 = prepared
    _run_method(method, q, x)
    hwm = status_kb("VmHWM")
    return None if hwm is None or rss0 is None else (hwm - rss0) / 1024


def run(out_dir: Path, quick: bool) -> list[Path]:
    methods = ["derainkit", "cdist+topk"]
    if _have_faiss():
        methods += ["faiss.knn", "derainkit-faiss"]
    rounds = 2 if quick else 5
    rows = []
    for size in (SIZES_QUICK if quick else SIZES_FULL):
        m = n = size
        q, x = _inputs(m, n)
        load_before = loadavg()
        results = {meth: _run_method(meth, q, x) for meth in methods}  # also the warm-up call
        times: dict[str, list[float]] = {meth: [] for meth in methods}
        for _ in range(rounds):
            for meth in methods:
                times[meth].append(time_it(lambda: _run_method(meth, q, x), repeats=1, warmup=0))
        secs = {meth: statistics.median(v) for meth, v in times.items()}
        ours = results["derainkit"].sort(1).values
        for meth in methods:
            try:
                mem = peak_extra_mb(peak_rss_in_subprocess(_mem_target, meth, m, n))
            except RuntimeError as exc:  # report, keep the timing row
                print(f"   peak memory of {meth} failed: {exc}")
                mem = float("nan")
            agree = (results[meth].sort(1).values == ours).all(1).float().mean().item()
            rows.append({
                "case": f"m=n={size},e={E},k={K}", "m": m, "n": n, "e": E, "k": K, "method": meth,
                "seconds": round(secs[meth], 4),
                "ratio_vs_faiss": round(secs[meth] / secs["faiss.knn"], 3) if "faiss.knn" in secs else "",
                "ratio_vs_cdist": round(secs[meth] / secs["cdist+topk"], 3),
                "peak_extra_mb": round(mem, 1), "agreement": round(agree, 6),
                "timing": f"median of {rounds} interleaved rounds",
                "loadavg_1m_before": load_before, "loadavg_1m_after": loadavg(),
                "device": device_name("cpu"),
            })
            print(f"   {rows[-1]['case']} {meth}: {secs[meth]:.3f} s, {mem:.0f} MB, agreement {agree:.4f}",
                  flush=True)
    name = "knn_global_quick.csv" if quick else "knn_global.csv"
    return [write_csv(out_dir / name, rows)]


def summarize(paths: list[Path]) -> str:
    import csv

    lines = ["## Global exact kNN (e=288, k=5)", "",
             "| case | method | seconds | vs faiss | vs cdist | peak extra MB | agreement |",
             "|---|---|---|---|---|---|---|"]
    for p in paths:
        with open(p) as fh:
            for r in csv.DictReader(fh):
                lines.append(f"| {r['case']} | {r['method']} | {r['seconds']} | {r['ratio_vs_faiss']} | "
                             f"{r['ratio_vs_cdist']} | {r['peak_extra_mb']} | {r['agreement']} |")
    lines.append("")
    lines.append("derainkit = `knn(..., backend='torch')` (chunked GEMM + topk + exact fp32 re-rank); "
                 "derainkit-faiss = faiss shortlist + the same re-rank. Ratios < 1 are faster.")
    return "\n".join(lines)
