"""Training throughput: iterations per second of the training loop's work for PReNet and MSGNN.

Each iteration is what ``derainkit.train`` does per step: draw the batch from the pure-function sampler
(embedded training set, 64×64 crops, batch 8, exemplar crops for MSGNN with the "random" policy), then
the paired training task's step (forward, −SSIM loss, backward, Adam 5e-4). Default model configs (PReNet: 6 stages,
32 channels; MSGNN: the code variant, N=4, M=12, C=32). After one untimed warm-up iteration, each
iteration is timed; rows give the median, and how much of it was spent preparing the batch.

Rows (results/bench/train_throughput.csv, or train_throughput_quick.csv with --quick):
  model, params, batch, crop, exemplar, iterations timed, seconds per iteration, iterations per second,
  data_ms (median batch preparation), device, torch threads, 1-min load average before/after.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from bench.common import device_name, sync, write_csv

BATCH, CROP = 8, 64
# (model, iterations timed) per mode; MSGNN takes about 12 s per step on a 2-core CPU.
PLAN_FULL = [("prenet", 5), ("msgnn", 3)]
PLAN_QUICK = [("prenet", 2), ("msgnn", 1)]


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return ""


def _measure(name: str, iterations: int, device: torch.device) -> dict:
    """Time the paired training task's own step (what ``derainkit train`` runs) on the embedded set."""
    from derainkit.train.config import RunConfig
    from derainkit.train.step_time import ready_task

    cfg = RunConfig(model=name, train_data="embedded:train", crop=CROP, batch=BATCH, val_data=None,
                    exemplar="random" if name == "msgnn" else "none", device=str(device))
    task, sampler = ready_task(cfg, device)
    data_s, step_s = [], []
    for it in range(1 + iterations):  # iteration 0 is the warm-up
        t0 = time.perf_counter()
        batch = sampler.batch(it)
        t1 = time.perf_counter()
        loss = float(task.step(batch, it)["loss"])
        sync(device)
        t2 = time.perf_counter()
        if it > 0:
            data_s.append(t1 - t0)
            step_s.append(t2 - t0)
        print(f"   {name} iteration {it}{' (warm-up)' if it == 0 else ''}: {t2 - t0:.2f} s, loss {loss:.4f}",
              flush=True)
    sec = statistics.median(step_s)
    model = task.modules["model"]
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "batch": BATCH, "crop": CROP,
            "exemplar": cfg.exemplar if task.uses_exemplar else "none", "iterations_timed": iterations,
            "seconds_per_iteration": round(sec, 4), "iterations_per_second": round(1.0 / sec, 4),
            "data_ms": round(1000 * statistics.median(data_s), 2),
            "timing": f"median of {iterations} after 1 warm-up", "device": device_name(device),
            "torch_threads": torch.get_num_threads()}


def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.infer import resolve_device

    device = resolve_device("auto")
    rows = []
    for name, iterations in (PLAN_QUICK if quick else PLAN_FULL):
        before = _loadavg()
        try:
            row = _measure(name, iterations, device)
        except Exception as exc:  # noqa: BLE001 - a model that does not build yet is reported, not fatal
            print(f"   {name}: not measured ({type(exc).__name__}: {exc})", flush=True)
            row = {"model": name, "batch": BATCH, "crop": CROP, "note": f"not measured: {type(exc).__name__}: {exc}",
                   "device": device_name(device)}
        row.update(loadavg_1m_before=before, loadavg_1m_after=_loadavg())
        rows.append(row)
    name = "train_throughput_quick.csv" if quick else "train_throughput.csv"
    return [write_csv(out_dir / name, rows)]


def summarize(paths: list[Path]) -> str:
    import csv

    lines = [f"## Training throughput (batch {BATCH}, {CROP}×{CROP} crops, −SSIM, Adam)", "",
             "| model | params | exemplar | s / iteration | iterations / s | batch prep ms | device |",
             "|---|---|---|---|---|---|---|"]
    for p in paths:
        with open(p) as fh:
            for r in csv.DictReader(fh):
                if r.get("note"):
                    lines.append(f"| {r['model']} | | | {r['note']} | | | {r['device']} |")
                    continue
                lines.append(f"| {r['model']} | {int(r['params']):,} | {r['exemplar']} | {r['seconds_per_iteration']} | "
                             f"{r['iterations_per_second']} | {r['data_ms']} | {r['device']} |")
    lines.append("")
    lines.append("One iteration = sampler batch + forward + loss + backward + optimizer step, as in `derainkit.train`; "
                 "default model configs.")
    return "\n".join(lines)
