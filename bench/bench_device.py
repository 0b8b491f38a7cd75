"""On the accelerator: global exact kNN vs ``torch.cdist`` + ``topk``, and whole-image inference at 1 and 12 MP.

The GPU run's counterpart of ``bench_knn_global`` and ``bench_infer``, which measure the CPU with peak RSS per
process. Here everything runs in one process on ``resolve_device("auto")``: times are taken after a device
synchronisation, peak memory is ``torch.cuda.max_memory_allocated`` above what was allocated before the call
(inputs and weights excluded), and an out-of-memory call is a row that says so instead of ending the module.

Rows (results/bench/gpu/device_knn.csv, device_infer.csv; the CSV is rewritten after every row, so a run cut
off by its time limit keeps what it measured):

  kNN      m = n = 4096, 16384, 65536 patches of e = 288 (3×3×32), k = 5: derainkit ``knn`` (exact, chunked)
           vs ``cdist``+``topk`` (one m×n matrix); ``agreement`` = queries whose neighbour set equals ours
  infer    the shipped MSGNN and PReNet (the baseline, random weights: weights do not change the cost) at
           1 MP (1000×1000) and 12 MP (4000×3000), fp32, automatic tiling from the device's free memory

Without CUDA a full run measures nothing (the CPU has its own modules) and says so; ``--quick`` runs the same
code at toy sizes on whatever device is there, which is what the GPU run's dry run and the tests execute.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import device_name, reset_peak_rss, status_kb, sync, write_csv

E, K = 288, 5
KNN_SIZES = {False: [4096, 16384, 65536], True: [512]}
INFER_SIZES = {False: {"1MP": (1000, 1000), "12MP": (3000, 4000)}, True: {"toy": (48, 64)}}
KNN_REPEATS = {False: 5, True: 2}


class _Peak:
    """Peak memory of the work between ``start()`` and ``stop()`` in MB above the level at ``start()``:
    the CUDA caching allocator's counters on a GPU, the process's VmHWM on a CPU (coarse, Linux only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            self.base = (status_kb("VmRSS") or 0) * 1024

    def stop(self) -> float:
        sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (status_kb("VmHWM") or 0) * 1024
        return round(max(0, peak - self.base) / 2**20, 1)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[Any, float, float]:
    """(last result, median seconds over ``repeats`` synchronised calls after one warm-up, peak MB of one call)."""
    peak = _Peak(device)
    peak.start()
    out = fn()  # warm-up (kernels, cuBLAS handles) doubles as the memory measurement
    mb = peak.stop()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), mb


def _knn_rows(device: torch.device, quick: bool, path: Path) -> list[dict]:
    from derainkit.knn import knn

    methods: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "derainkit": lambda q, x: knn(q[None], x[None], K, backend="torch")[1][0],
        "cdist+topk": lambda q, x: torch.cdist(q, x).topk(K, dim=1, largest=False).indices,
    }
    rows: list[dict] = []
    for size in KNN_SIZES[quick]:
        g = torch.Generator().manual_seed(size)
        q, x = torch.randn(size, E, generator=g).to(device), torch.randn(size, E, generator=g).to(device)
        found: dict[str, torch.Tensor] = {}
        secs: dict[str, float] = {}
        for name, fn in methods.items():
            row: dict[str, Any] = {"case": f"m=n={size},e={E},k={K}", "m": size, "n": size, "e": E, "k": K,
                                   "method": name, "device": device_name(device)}
            try:
                idx, secs[name], row["peak_extra_mb"] = _timed(lambda: fn(q, x), device, KNN_REPEATS[quick])
                found[name] = idx.sort(1).values.cpu()
                row.update(seconds=round(secs[name], 5), status="ok", timing=f"median of {KNN_REPEATS[quick]}")
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _is_oom(exc):
                    raise
                row.update(seconds="", peak_extra_mb="", status="out of memory")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"   knn {row['case']} {name}: {row['status']} {row.get('seconds')} s, "
                  f"{row.get('peak_extra_mb')} MB", flush=True)
        ours = found.get("derainkit")
        for row in rows[-len(methods):]:
            meth = row["method"]
            row["ratio_vs_cdist"] = round(secs[meth] / secs["cdist+topk"], 3) if meth in secs and "cdist+topk" in secs else ""
            row["agreement"] = (round((found[meth] == ours).all(1).float().mean().item(), 6)
                                if meth in found and ours is not None else "")
        write_csv(path, rows)
    return rows


def _infer_rows(device: torch.device, quick: bool, path: Path) -> list[dict]:
    import numpy as np

    from derainkit.infer import Predictor
    from derainkit.models import build_model, get_model_spec

    rows: list[dict] = []
    predictors = {}
    for model, name in (("prenet", "prenet"), ("msgnn", "msgnn-shipped")):
        torch.manual_seed(0)
        net = build_model(model)  # msgnn: the shipped weights; prenet ships none and keeps its random init
        predictors[name] = Predictor(net, get_model_spec(model).infer_bytes_per_pixel, device=device, label=name)
        predictors[name](np.zeros((48, 64, 3), np.float32))  # warm-up: kernels, cuDNN, allocator
    for label, (h, w) in INFER_SIZES[quick].items():
        img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
        base = None
        for name, predictor in predictors.items():
            row: dict[str, Any] = {"size": label, "height": h, "width": w, "model": name, "precision": "fp32",
                                   "device": device_name(device)}
            peak = _Peak(device)
            try:
                peak.start()
                t0 = time.perf_counter()
                out, plan = predictor(img)  # returns a host array: the device work has finished
                seconds = time.perf_counter() - t0
                row["peak_extra_mb"] = peak.stop()
                assert out.shape == img.shape
                tiling = plan.to_dict()
                base = seconds if name == "prenet" else base
                row.update(seconds=round(seconds, 3), status="ok",
                           ratio_vs_prenet=round(seconds / base, 3) if base else "",
                           tile=tiling.get("tile") or "whole image", overlap=tiling.get("overlap", ""))
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _is_oom(exc):
                    raise
                row.update(seconds="", peak_extra_mb="", status="out of memory", ratio_vs_prenet="", tile="", overlap="")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            write_csv(path, rows)
            print(f"   infer {label} {name}: {row['status']} {row['seconds']} s, {row['peak_extra_mb']} MB, "
                  f"tile {row['tile']}", flush=True)
    return rows


def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.infer import resolve_device

    device = resolve_device("auto")
    if device.type != "cuda" and not quick:
        print("   no CUDA device: nothing to measure (the CPU figures are bench_knn_global and bench_infer)")
        return []
    suffix = "_quick" if quick else ""
    paths = [out_dir / f"device_knn{suffix}.csv", out_dir / f"device_infer{suffix}.csv"]
    _knn_rows(device, quick, paths[0])
    _infer_rows(device, quick, paths[1])
    return paths


def summarize(paths: list[Path]) -> str:
    import csv

    title = "## On the accelerator: kNN vs cdist+topk, inference at 1 and 12 MP (bench_device)"
    if not paths:
        return title + "\n\nNot run: no CUDA device (`make gpu-run` runs it on a GPU)."
    lines = [title, "", "| case | method | seconds | vs cdist | peak extra MB | agreement | device |",
             "|---|---|---|---|---|---|---|"]
    for r in csv.DictReader(paths[0].open()):
        secs = r["seconds"] if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['case']} | {r['method']} | {secs} | {r['ratio_vs_cdist']} | {r['peak_extra_mb']} | "
                     f"{r['agreement']} | {r['device']} |")
    lines += ["", "| size | model | seconds | × PReNet | peak extra MB | tiling | device |",
              "|---|---|---|---|---|---|---|"]
    for r in csv.DictReader(paths[1].open()):
        secs = r["seconds"] if r["status"] == "ok" else r["status"]
        tiling = r["tile"] if r["tile"] in ("whole image", "") else f"tiles {r['tile']} px, overlap {r['overlap']}"
        lines.append(f"| {r['size']} ({r['width']}×{r['height']}) | {r['model']} | {secs} | {r['ratio_vs_prenet']} | "
                     f"{r['peak_extra_mb']} | {tiling} | {r['device']} |")
    lines += ["", "Peak extra MB: on CUDA `max_memory_allocated` above what inputs and weights held before the call; "
              "on a CPU (quick runs only) the process's VmHWM, coarse. Ratios < 1 are faster."]
    return "\n".join(lines)
