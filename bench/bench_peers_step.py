"""Table 1 peers: one training step (batch 8, 64×64, Adam) and whole-image inference, against PReNet.

Models: the part-B peers (DCSFN, MSPFN, RCDNet, DualGCN, MOSS) at their official default sizes, plus the
part-A peers (SPANet, DRN, RESCAN) when their modules are present in ``derainkit/models``, each built
directly from its module (``<Name>`` and ``<Name>Config`` with the default config), and PReNet (the
baseline, measured in the same run). Weights are random: they do not change the cost.

* ``train_step``: random 8×3×64×64 rainy/clean batch, forward, the loss the kit trains the model with
  (its recipe's, from ``derainkit.losses``; stage and attention losses as the paired task calls them;
  PReNet −SSIM), backward, ``Adam.step``. One untimed step,
  then the median of 3 (``--quick``: of 1).
* ``infer``: eval mode, ``no_grad``, one image of 1000×1000 (``--quick``: 512×512), in a fresh process
  after a 64×64 warm-up call; seconds of one call, and the peak resident memory the call added (VmHWM −
  VmRSS before it) as MB and bytes per input pixel — the figure ``ModelSpec.infer_bytes_per_pixel``
  is set from (at 512×512).

``ratio_vs_prenet`` is the model's seconds over PReNet's for the same task in this run. Rows carry the
1-minute load average before and after: on a shared machine the absolute times are only indicative.
Rows: results/bench/peers_step.csv (``peers_step_quick.csv`` with ``--quick``).
"""
from __future__ import annotations

import importlib
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import device_name, loadavg, peak_rss_in_subprocess, reset_peak_rss, status_kb, sync, write_csv

BATCH, CROP = 8, 64
# (label, module under derainkit.models, class name); part A's are measured when their modules exist
PEERS = [("prenet", "prenet", "PReNet"), ("dcsfn", "dcsfn", "DCSFN"), ("mspfn", "mspfn", "MSPFN"),
         ("rcdnet", "rcdnet", "RCDNet"), ("dualgcn", "dualgcn", "DualGCN"), ("moss", "moss", "MOSS"),
         ("spanet", "spanet", "SPANet"), ("drn", "drn", "DRN"), ("rescan", "rescan", "RESCAN")]


def _build(module: str, cls: str) -> torch.nn.Module:
    mod = importlib.import_module(f"derainkit.models.{module}")
    config = getattr(mod, f"{cls}Config")
    return getattr(mod, cls)(config.from_dict({}))


def _available() -> list[tuple[str, str, str]]:
    out = []
    for label, module, cls in PEERS:
        try:
            mod = importlib.import_module(f"derainkit.models.{module}")
        except ImportError:
            continue
        if hasattr(mod, cls) and hasattr(mod, f"{cls}Config"):
            out.append((label, module, cls))
    return out


def _loss(label: str, module: str):
    """(name, loss(model, rainy, clean)) of the loss the kit trains the model with: its recipe's (PReNet: −SSIM),
    through the same registry and ModelLoss convention as the paired training task."""
    from derainkit.losses import ModelLoss, get_loss
    from derainkit.models import get_model_spec

    name = "ssim" if label == "prenet" else get_model_spec(label).run_recipe().get("loss", "ssim")
    fn = get_loss(name)
    if isinstance(fn, ModelLoss):  # the model returns stages / an attention map, the loss may read the input
        return name, lambda m, r, c: fn(m(r, **fn.forward_kwargs), c, r)
    return name, lambda m, r, c: fn(m(r), c)


def _train_step(label: str, module: str, cls: str, device: torch.device, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = _build(module, cls).to(device).train()
    name, loss_of = _loss(label, module)
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(BATCH, 3, CROP, CROP, generator=g).to(device)
    rainy = (clean + 0.3 * (torch.rand(BATCH, 1, CROP, CROP, generator=g) > 0.9)).clamp(0, 1).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    times = []
    for it in range(1 + repeats):  # iteration 0 is the warm-up
        t0 = time.perf_counter()
        loss = loss_of(model, rainy, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if it:
            times.append(time.perf_counter() - t0)
        print(f"   {label} train step {it}{' (warm-up)' if it == 0 else ''}: {time.perf_counter() - t0:.2f} s", flush=True)
    return {"model": label, "task": "train_step", "params": sum(p.numel() for p in model.parameters()),
            "batch": BATCH, "size": f"{CROP}x{CROP}", "loss": name, "seconds": round(statistics.median(times), 4),
            "timing": f"median of {repeats} after 1 warm-up"}


def _infer_target(module: str, cls: str, side: int, phase: str, prepared=None):
    """Run in a fresh process: prepare = build + warm-up; run = one timed call, with its own peak RSS."""
    torch.manual_seed(0)
    if phase == "prepare":
        model = _build(module, cls).eval()
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
        return model, torch.rand(1, 3, side, side)
    model, x = prepared
    reset_peak_rss()
    before = status_kb("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        y = model(x)
    seconds = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    assert y.shape == x.shape
    extra = (peak - before) / 1024 if peak is not None and before is not None else None
    return {"seconds": seconds, "extra_mb": extra}


def _infer(label: str, module: str, cls: str, side: int) -> dict[str, Any]:
    out = peak_rss_in_subprocess(_infer_target, module, cls, side, timeout=7200)
    res = out["result"]
    extra_mb = res["extra_mb"] if res["extra_mb"] is not None else float(out["rss_extra_mb"])
    print(f"   {label} infer {side}x{side}: {res['seconds']:.2f} s, +{extra_mb:.0f} MB", flush=True)
    return {"model": label, "task": "infer", "size": f"{side}x{side}", "megapixels": round(side * side / 1e6, 3),
            "seconds": round(res["seconds"], 3), "rss_extra_mb": round(extra_mb, 1),
            "bytes_per_pixel": round(extra_mb * 2**20 / (side * side), 1), "timing": "one call after a 64x64 warm-up"}


def run(out_dir: Path, quick: bool, models: list[str] | None = None, tasks: tuple[str, ...] = ("train_step", "infer")
        ) -> list[Path]:
    """Measure every peer (or only ``models``, PReNet always included as the baseline, and only ``tasks``);
    a partial run replaces those rows of an existing CSV and keeps the others with their own provenance."""
    from derainkit.infer import resolve_device

    device = resolve_device("auto")
    repeats, side = (1, 512) if quick else (3, 1000)
    rows: list[dict[str, Any]] = []
    wanted = None if models is None else {"prenet", *models}
    for label, module, cls in _available():
        if wanted is not None and label not in wanted:
            continue
        for task in tasks:
            before = loadavg()
            try:
                row = _train_step(label, module, cls, device, repeats) if task == "train_step" else \
                    _infer(label, module, cls, side)
            except Exception as exc:  # noqa: BLE001 - a model that fails is reported, not fatal
                print(f"   {label} {task}: not measured ({type(exc).__name__}: {exc})", flush=True)
                row = {"model": label, "task": task, "note": f"not measured: {type(exc).__name__}: {exc}"}
            row.update(device=device_name(device) if task == "train_step" else device_name("cpu"),
                       torch_threads=torch.get_num_threads(), loadavg_1m_before=before, loadavg_1m_after=loadavg())
            rows.append(row)
    base = {r["task"]: r["seconds"] for r in rows if r["model"] == "prenet" and "seconds" in r}
    for r in rows:
        if "seconds" in r and base.get(r["task"]):
            r["ratio_vs_prenet"] = round(r["seconds"] / base[r["task"]], 2)
    path = out_dir / ("peers_step_quick.csv" if quick else "peers_step.csv")
    if wanted is not None and path.is_file():  # keep the rows not re-measured (each row has its own commit)
        import csv

        fresh = {(r["model"], r["task"]) for r in rows}
        order = [label for label, _, _ in PEERS]
        with open(path, newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if (r["model"], r["task"]) not in fresh]
        rows = sorted(kept + rows, key=lambda r: (order.index(r["model"]) if r["model"] in order else 99,
                                                  ("train_step", "infer").index(r["task"])))
    return [write_csv(path, rows)]


def summarize(paths: list[Path]) -> str:
    import csv

    lines = [f"## Table 1 peers: training step (batch {BATCH}, {CROP}×{CROP}, own loss, Adam) and inference", "",
             "| model | params | train s/step | × PReNet | loss | infer size | infer s | × PReNet | +MB | B/px |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        with open(p) as fh:
            rows = list(csv.DictReader(fh))
        for model in dict.fromkeys(r["model"] for r in rows):
            t = next((r for r in rows if r["model"] == model and r["task"] == "train_step"), {})
            i = next((r for r in rows if r["model"] == model and r["task"] == "infer"), {})
            lines.append(f"| {model} | {t.get('params', '')} | {t.get('seconds') or t.get('note', '')} | "
                         f"{t.get('ratio_vs_prenet', '')} | {t.get('loss', '')} | {i.get('size', '')} | "
                         f"{i.get('seconds') or i.get('note', '')} | {i.get('ratio_vs_prenet', '')} | "
                         f"{i.get('rss_extra_mb', '')} | {i.get('bytes_per_pixel', '')} |")
    lines += ["", "Random weights (they do not change the cost); inference in a fresh process, one call after a "
              "warm-up; load averages in the CSV (a shared machine makes absolute times indicative only). "
              "Each × PReNet is against the PReNet step measured in the same run: rows merged from several runs "
              "(see each row's commit in the CSV) need not divide by the PReNet row shown, which is the latest run's."]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Re-measure some peers into results/bench/peers_step.csv")
    ap.add_argument("--models", required=True, help="comma-separated labels, e.g. spanet,drn,rescan")
    ap.add_argument("--tasks", default="train_step,infer")
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    for p in run(a.out, a.quick, a.models.split(","), tuple(a.tasks.split(","))):
        print(p)
        print(summarize([p]))

