"""How close to the machine: achieved FLOP/s of the MSGNN training step and of 1 MP inference against
the device's matrix-multiply peak measured in the same run.

Work measured (the kit's default MSGNN config: code variant, N=4, M=12, C=32):
  train_step  the paired training task's own step (what ``derainkit train`` runs): batch 8, 64×64 crops,
              exemplar crops ("random" policy), −SSIM loss, forward + backward + Adam 5e-4 step
  infer_1mp   eval mode, no_grad, the model's whole-image forward on one 1024×1024 image (the input
              serves as its own exemplar, as in ``derainkit derain``)
On CUDA each runs in fp32 and in bf16 autocast (the gpu profile's precision); on CPU in fp32 only.

FLOPs are counted once per task, outside the timed loop, with ``torch.utils.flop_counter.FlopCounterMode``
(one extra, untimed call that doubles as the warm-up). FlopCounterMode only counts matmul- and
convolution-like aten ops (mm, addmm, bmm, baddbmm, convolution and its backward, attention): the
elementwise work (activations, SSIM's products, Adam's update), reductions, gathers and ``topk`` are not
counted, so the achieved rate is a lower bound of how busy the counted work keeps the device. The kNN
search is instrumented separately during the count: the FLOPs its counted GEMMs (addmm/baddbmm on the
public path) contribute are reported, and every op it dispatched that FlopCounterMode has no formula for
is listed. On CPU the kNN's shortlist GEMM may go through oneDNN's ``mkldnn._linear_pointwise``, which
FlopCounterMode does not count; its FLOPs (2·M·N·K) are reported in ``knn_uncounted_gemm_gflop`` and are
not part of ``gflop``.

Peak: the median time of a large square ``torch.mm`` (fp32 4096² on CPU, 2048² with --quick; 8192² on
CUDA in fp32 (TF32 off), TF32 and bf16), measured before and after the model work; the higher of the two
runs is the peak (the machine may be shared: both are recorded, with the 1-minute load average).
``ratio`` = achieved / peak of the precision the row runs in (fp32 rows on CUDA: the fp32 peak, although
cuDNN may run their convolutions in TF32 by default, ``cudnn_allow_tf32``; ``ratio_vs_tf32`` is given too).

Rows (results/bench/flops.csv, flops_quick.csv with --quick; --quick: batch 2 and a 256×256 image, one
timed repeat):
  task, precision, batch, size, gflop (counted), knn_counted_gflop, knn_uncounted_gemm_gflop,
  knn_uncounted_ops, seconds (median), repeats, achieved_gflops, peak_kind, peak_gflops, ratio,
  ratio_incl_knn_gemm (the kNN's uncounted oneDNN GEMM FLOPs added), device, load averages, commit, torch
  task=peak_mm rows: the matrix-multiply measurements themselves.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.common import device_name, loadavg, sync, write_csv

BATCH, CROP = 8, 64


# ------------------------------------------------------------------------------------------ peak
def _mm_peak(device: torch.device, kind: str, n: int, repeats: int) -> dict[str, Any]:
    """Median seconds of an n×n×n torch.mm in `kind` (fp32 | tf32 | bf16) and the rate 2n³/t."""
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.rand(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    ctx = contextlib.nullcontext()
    if device.type == "cuda":
        ctx = _tf32(kind == "tf32")
    with ctx:
        torch.mm(a, b, out=out)  # warm-up: cuBLAS handle and heuristics, oneDNN primitive cache
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            sync(device)
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"kind": kind, "n": n, "seconds": sec, "gflops": 2.0 * n ** 3 / sec / 1e9, "repeats": repeats}


@contextlib.contextmanager
def _tf32(on: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _peaks(device: torch.device, quick: bool) -> dict[str, dict[str, Any]]:
    if device.type == "cuda":
        kinds, n, repeats = ("fp32", "tf32", "bf16"), 8192, (5 if quick else 20)
    else:
        kinds, n, repeats = ("fp32",), (2048 if quick else 4096), 3
    return {k: _mm_peak(device, k, n, repeats) for k in kinds}


# ------------------------------------------------------------------------------------------ counting
class _OpLog(TorchDispatchMode):
    """Records every aten op dispatched inside the kNN, and the FLOPs of oneDNN linear ops (not counted
    by FlopCounterMode) as 2·M·N·K."""

    def __init__(self, registry: dict) -> None:
        super().__init__()
        self.registry = registry
        self.uncounted: set[str] = set()
        self.onednn_flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = getattr(func, "_overloadpacket", func)
        if packet not in self.registry:
            self.uncounted.add(str(packet))
        if "linear_pointwise" in str(packet):
            a, w = args[0], args[1]
            self.onednn_flops += 2 * a.numel() // a.shape[-1] * w.shape[0] * a.shape[-1]
        return func(*args, **kwargs)


@contextlib.contextmanager
def _instrument_knn(counter: FlopCounterMode) -> Iterator[dict[str, Any]]:
    """Wrap the kNN entry point MSGNN's graph module calls, to attribute counted FLOPs to it."""
    from derainkit.models.msgnn import graph

    registry = getattr(counter, "flop_registry", {})
    stats: dict[str, Any] = {"counted": 0, "onednn": 0, "uncounted": set(), "calls": 0}
    original = graph.knn

    def wrapped(*args: Any, **kwargs: Any):
        before = counter.get_total_flops()
        log = _OpLog(registry)
        with log:
            out = original(*args, **kwargs)
        stats["counted"] += counter.get_total_flops() - before
        stats["onednn"] += log.onednn_flops
        stats["uncounted"] |= log.uncounted
        stats["calls"] += 1
        return out

    graph.knn = wrapped
    try:
        yield stats
    finally:
        graph.knn = original


def _count(fn: Callable[[], Any]) -> dict[str, Any]:
    """Counted FLOPs of one call of `fn` (total, per op), and the kNN's share (see the module docstring)."""
    with FlopCounterMode(display=False) as counter, _instrument_knn(counter) as knn_stats:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "per_op": per_op, "knn": knn_stats}


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ workloads
def _train_step(device: torch.device, precision: str, batch: int) -> Callable[[], Any]:
    """The paired task's step, as ``derainkit train`` runs it (the batches are drawn beforehand)."""
    from derainkit.train.config import RunConfig
    from derainkit.train.step_time import ready_task

    cfg = RunConfig(model="msgnn", train_data="embedded:train", crop=CROP, batch=batch, val_data=None,
                    exemplar="random", device=str(device), precision=precision)
    amp = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else None
    task, sampler = ready_task(cfg, device, amp_dtype=amp)
    batches = [sampler.batch(i) for i in range(4)]  # drawn once: batch preparation is not the work measured
    state = {"it": 0}

    def step() -> None:
        it = state["it"]
        task.step(batches[it % len(batches)], it)
        state["it"] = it + 1
    return step


def _inference(device: torch.device, precision: str, size: int) -> Callable[[], Any]:
    from derainkit.models.msgnn import MSGNN

    torch.manual_seed(0)
    model = MSGNN().to(device).eval()  # weights do not change the cost
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    amp = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())

    def forward() -> None:
        with torch.no_grad(), amp:
            y = model(x)
        assert y.shape == x.shape
    return forward


def _peak_for(precision: str, device: torch.device, peaks: dict[str, dict[str, Any]]) -> tuple[str, float]:
    kind = "bf16" if precision == "bf16" and device.type == "cuda" else "fp32"
    return kind, peaks[kind]["gflops"]


# ------------------------------------------------------------------------------------------ run
def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.infer import resolve_device

    device = resolve_device("auto")
    dev_name = device_name(device)
    batch = 2 if quick else BATCH
    infer_size = 256 if quick else 1024
    # 1 MP inference takes minutes on a 2-core CPU: two timed runs (after the counting run) there
    repeats = {"train_step": 1 if quick else 3, "infer": 1 if quick else 2}
    if device.type == "cuda":
        repeats = {"train_step": 3 if quick else 10, "infer": 2 if quick else 5}
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    load_start = loadavg()

    peaks_before = _peaks(device, quick)
    print("   peak before: " + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s" for k, v in peaks_before.items()), flush=True)
    measured = []
    for precision in precisions:
        work = [("train_step", f"{CROP}x{CROP}", batch, lambda p=precision: _train_step(device, p, batch)),
                (f"infer_{'1mp' if infer_size == 1024 else infer_size}", f"{infer_size}x{infer_size}", 1,
                 lambda p=precision: _inference(device, p, infer_size))]
        for task, size, b, make in work:
            fn = make()
            counted = _count(fn)  # also the warm-up call
            seconds = _timed(fn, device, repeats["infer" if task.startswith("infer") else task])
            measured.append((task, precision, size, b, counted, seconds,
                             repeats["infer" if task.startswith("infer") else task]))
            print(f"   {task} {precision}: {counted['flops'] / 1e9:.1f} GFLOP counted, {seconds:.3f} s, "
                  f"{counted['flops'] / seconds / 1e9:.1f} GFLOP/s", flush=True)
            del fn
    peaks_after = _peaks(device, quick)
    peaks = {k: max(peaks_before[k], peaks_after[k], key=lambda p: p["gflops"]) for k in peaks_before}
    load_end = loadavg()

    common = {"device": dev_name, "loadavg_1m_start": load_start, "loadavg_1m_end": load_end,
              "torch_threads": torch.get_num_threads(),
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else ""}
    rows = []
    for task, precision, size, b, counted, seconds, reps in measured:
        kind, peak = _peak_for(precision, device, peaks)
        achieved = counted["flops"] / seconds / 1e9
        knn = counted["knn"]
        rows.append({
            "task": task, "precision": precision, "batch": b, "size": size,
            "gflop": round(counted["flops"] / 1e9, 3),
            "gflop_by_op": ";".join(f"{op}={n / 1e9:.3f}" for op, n in sorted(counted["per_op"].items())),
            "knn_calls": knn["calls"], "knn_counted_gflop": round(knn["counted"] / 1e9, 4),
            "knn_uncounted_gemm_gflop": round(knn["onednn"] / 1e9, 4),
            "knn_uncounted_ops": ";".join(sorted(knn["uncounted"])),
            "seconds": round(seconds, 4), "repeats": reps, "achieved_gflops": round(achieved, 2),
            "peak_kind": kind, "peak_gflops": round(peak, 2), "ratio": round(achieved / peak, 4),
            "ratio_vs_tf32": round(achieved / peaks["tf32"]["gflops"], 4) if "tf32" in peaks else "",
            # with the kNN's oneDNN GEMMs (CPU) added back: the rate of all the matmul work that was found
            "ratio_incl_knn_gemm": round((counted["flops"] + knn["onednn"]) / seconds / 1e9 / peak, 4),
            **common})
    for kind in peaks:
        for when, p in (("before", peaks_before[kind]), ("after", peaks_after[kind])):
            rows.append({"task": "peak_mm", "precision": kind, "size": f"{p['n']}x{p['n']}x{p['n']}",
                         "gflop": round(2 * p["n"] ** 3 / 1e9, 3), "seconds": round(p["seconds"], 5),
                         "repeats": p["repeats"], "achieved_gflops": round(p["gflops"], 2),
                         "peak_kind": kind, "peak_gflops": round(peaks[kind]["gflops"], 2),
                         "ratio": round(p["gflops"] / peaks[kind]["gflops"], 4), "note": f"measured {when} the model work",
                         **common})
    return [write_csv(Path(out_dir) / ("flops_quick.csv" if quick else "flops.csv"), rows)]


_ARITH = ("topk", "sort", "cdist", "linear", "gather", "sum", "sub", "mul", "add", "pow", "min", "max", "div")


def _arith(ops: str) -> str:
    """The uncounted ops that compute something (the CSV also has the views, copies and indexing)."""
    names = [op for op in ops.split(";") if op]
    return ", ".join(op for op in names if any(key in op.split(".")[-1] for key in _ARITH))


def summarize(paths: list[Path]) -> str:
    import csv

    rows = list(csv.DictReader(paths[0].open()))
    work = [r for r in rows if r["task"] != "peak_mm"]
    peaks = [r for r in rows if r["task"] == "peak_mm"]
    lines = ["## How close to the machine: counted FLOP/s vs the measured matmul peak (bench_flops)", "",
             ("| task | precision | batch | size | GFLOP counted | median s | achieved GFLOP/s | peak GFLOP/s | "
              "achieved / peak | with the kNN's oneDNN GEMMs |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in work:
        lines.append(f"| {r['task']} | {r['precision']} | {r['batch']} | {r['size']} | {r['gflop']} | {r['seconds']} | "
                     f"{r['achieved_gflops']} | {r['peak_gflops']} ({r['peak_kind']} mm) | "
                     f"{100 * float(r['ratio']):.1f} % | {100 * float(r['ratio_incl_knn_gemm']):.1f} % |")
    lines += ["", "Matrix-multiply peak, " + "; ".join(
        f"{r['precision']} {r['size']} {r['note'].removeprefix('measured ')}: {r['achieved_gflops']} GFLOP/s"
        for r in peaks) + f". Device: {rows[0]['device']}; 1-min load average {rows[0]['loadavg_1m_start']} at "
        f"the start, {rows[0]['loadavg_1m_end']} at the end."]
    if work:
        knn = work[0]
        lines += ["", "FlopCounterMode counts only matmul/convolution-like ops (here: "
                  + ", ".join(op.split("=")[0] for op in knn["gflop_by_op"].split(";") if op) + "); elementwise ops, "
                  "reductions, gathers, the SSIM loss's products and Adam's update are not counted, so the ratio is "
                  "a lower bound of the utilisation of the counted work. The kNN search (" + knn["knn_calls"]
                  + f" calls in the training step): {knn['knn_counted_gflop']} GFLOP of it counted (its public-path "
                  f"GEMMs), {knn['knn_uncounted_gemm_gflop']} GFLOP of oneDNN GEMM not counted; arithmetic ops it "
                  f"dispatched that FlopCounterMode has no formula for: {_arith(knn['knn_uncounted_ops']) or 'none'} "
                  "(the CSV lists every uncounted op, views and copies included)."]
    return "\n".join(lines)
