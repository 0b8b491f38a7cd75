"""Whole-image inference (`derainkit derain`'s path): seconds and peak memory at 0.25, 1 and 12 megapixels.

Rows (results/bench/infer.csv), each measured in a fresh process (peak RSS is per process):

  model=msgnn-shipped  the checkpoint the kit ships (derainkit/weights/), automatic tiling
  model=prenet         PReNet (6 stages, 0.17 M parameters): the baseline, same process type, same sizes

``ratio_vs_prenet`` is MSGNN's seconds over PReNet's at the same size, both measured in this run.
The tiling each run chose (tile side, overlap, blend, reason) is recorded, since tiling changes a graph
model's neighbours. Weights do not change the cost, so PReNet runs with random weights when the
official file is absent. ``--quick`` measures 0.25 MP only.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_in_subprocess, write_csv

SIZES = {"0.25MP": (500, 500), "1MP": (1000, 1000), "12MP": (3000, 4000)}


def _target(model: str, h: int, w: int, phase: str, prepared=None):
    import torch

    from derainkit.infer import Predictor
    from derainkit.models import build_model, get_model_spec

    if phase == "prepare":
        torch.manual_seed(0)
        # build_model loads the shipped weights for msgnn; prenet ships none, so it keeps its random init
        net = build_model(model, device="cpu")
        img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
        return Predictor(net, get_model_spec(model).infer_bytes_per_pixel, device="cpu"), img
    predictor, img = prepared
    t0 = time.perf_counter()
    out, plan = predictor(img)
    seconds = time.perf_counter() - t0
    assert out.shape == img.shape
    return {"seconds": seconds, "tiling": plan.to_dict()}


def run(out_dir: Path, quick: bool) -> list[Path]:
    from derainkit.models import get_model_spec

    if get_model_spec("msgnn").default_weights is None:
        raise RuntimeError("the kit ships no MSGNN checkpoint (derainkit/weights/); nothing to benchmark")
    rows = []
    sizes = {"0.25MP": SIZES["0.25MP"]} if quick else SIZES
    for label, (h, w) in sizes.items():
        base = None
        for model, name in (("prenet", "prenet"), ("msgnn", "msgnn-shipped")):
            res = peak_rss_in_subprocess(_target, model, h, w, timeout=3600)
            out = res["result"]
            tiling = out["tiling"]
            if model == "prenet":
                base = out["seconds"]
            rows.append({"size": label, "height": h, "width": w, "model": name, "seconds": round(out["seconds"], 2),
                         "ratio_vs_prenet": round(out["seconds"] / base, 2) if base else "",
                         "peak_extra_mb": round(res["rss_extra_mb"], 1), "peak_rss_mb": round(res["rss_peak_mb"], 1),
                         "tile": tiling.get("tile") or "whole image", "overlap": tiling.get("overlap", ""),
                         "blend": tiling.get("blend", "")})
            print(f"   {label} {name}: {out['seconds']:.1f} s, peak RSS {res['rss_peak_mb']:.0f} MB, "
                  f"tile {tiling.get('tile')}", flush=True)
    path = out_dir / ("infer-quick.csv" if quick else "infer.csv")
    write_csv(path, rows)
    return [path]


def summarize(paths: list[Path]) -> str:
    import csv

    rows = list(csv.DictReader(paths[0].open()))
    lines = ["## Inference, whole image or automatic tiles (CPU unless the device says otherwise)", "",
             "| size | model | seconds | × PReNet | peak RSS (MB) | tiling |", "|---|---|---|---|---|---|"]
    for r in rows:
        tiling = r["tile"] if r["tile"] == "whole image" else f"tiles {r['tile']} px, overlap {r['overlap']}"
        lines.append(f"| {r['size']} ({r['width']}×{r['height']}) | {r['model']} | {r['seconds']} | "
                     f"{r['ratio_vs_prenet'] or '1'} | {r['peak_rss_mb']} | {tiling} |")
    return "\n".join(lines)
