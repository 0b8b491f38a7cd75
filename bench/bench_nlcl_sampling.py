"""NLCL's non-local patch sampler: the kit's vectorised, batched search against a literal port of the
official Python loop (``bench/nlcl_sampling_literal.py``), on 256×256 crops (the official crop size).

Rows (results/bench/nlcl_sampling.csv):

  batch=1   the official sampler's three uses: pixels with k=8 (LayerNCE positives) and k=128 (negatives),
            and G_B's 32-channel layer-0 features with k=256 (LocNCE); ``literal_s`` is the loop port,
            ``speedup`` = literal_s / vectorised_s, ``same_patches`` = identical selected sets
  batch=8   eight images with different anchors in one call; ``per_image_s`` is the kit's sampler called
            once per image, ``same_patches`` = the batched call equals the per-image calls; for pixels the
            literal port also runs on all eight images (``literal_s``), so that ``speedup`` is measured

Both run on the CPU in this process, same inputs, one torch thread for the literal port and the kit
alike (the loop port cannot use more). ``--quick``: pixels only, fewer repeats.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.common import device_name, loadavg, time_it, write_csv
from bench.nlcl_sampling_literal import literal_nonlocal_topk

CROP = 256
CASES = (("pixels", 3, 8), ("pixels", 3, 128), ("G_B layer 0", 32, 256))


def _maps(channels: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(channels * 1000 + batch)
    return torch.rand(batch, channels, CROP, CROP, generator=g)


def _anchors(batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(16, CROP - 16 + 1, (batch, 2), generator=g)


def _as_sets(ids: torch.Tensor) -> list[set]:
    return [set(map(tuple, row.tolist())) for row in ids]


def _row(case: str, channels: int, k: int, batch: int, quick: bool) -> dict:
    from derainkit.losses.nonlocal_sampling import nonlocal_topk

    maps, anchors = _maps(channels, batch), _anchors(batch)
    repeats = 2 if quick else 5
    vec = time_it(lambda: nonlocal_topk(maps, anchors, k), repeats=repeats)
    sample = nonlocal_topk(maps, anchors, k)
    row = {"case": case, "channels": channels, "k": k, "batch": batch, "crop": CROP,
           "vectorised_s": round(vec, 5), "device": device_name("cpu"), "loadavg": loadavg()}
    singles = [nonlocal_topk(maps[i:i + 1], anchors[i:i + 1], k) for i in range(batch)]
    if batch > 1:
        row["per_image_s"] = round(time_it(lambda: [nonlocal_topk(maps[i:i + 1], anchors[i:i + 1], k)
                                                    for i in range(batch)], repeats=repeats), 5)
        row["same_as_per_image"] = all(torch.equal(sample.ids[i], s.ids[0]) for i, s in enumerate(singles))
    if channels == 3 or batch == 1:
        literal = [None] * batch

        def run_literal() -> None:
            for i in range(batch):
                literal[i] = literal_nonlocal_topk(maps[i:i + 1], tuple(anchors[i].tolist()), k)[0]

        row["literal_s"] = round(time_it(run_literal, repeats=1, warmup=1 if channels == 3 else 0), 4)
        row["speedup"] = round(row["literal_s"] / vec, 1)
        row["same_patches"] = _as_sets(sample.ids) == [set(map(tuple, ids.tolist())) for ids in literal]
    return row


def run(out_dir: Path, quick: bool) -> list[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for case, channels, k in CASES:
            if quick and channels != 3:
                continue
            for batch in (1, 8):
                rows.append(_row(case, channels, k, batch, quick))
                r = rows[-1]
                print(f"   {case} k={k} batch {batch}: vectorised {r['vectorised_s']} s, literal "
                      f"{r.get('literal_s', '-')} s, speed-up {r.get('speedup', '-')}", flush=True)
    finally:
        torch.set_num_threads(threads)
    path = out_dir / ("nlcl_sampling-quick.csv" if quick else "nlcl_sampling.csv")
    write_csv(path, rows)
    return [path]


def summarize(paths: list[Path]) -> str:
    import csv

    rows = list(csv.DictReader(paths[0].open()))
    lines = ["## NLCL non-local sampling: vectorised and batched vs the official loop (256×256, 1 thread)", "",
             "| map | k | batch | vectorised (s) | literal loop (s) | speed-up | same patches | batch = per image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} ({r['channels']} ch) | {r['k']} | {r['batch']} | {r['vectorised_s']} | "
                     f"{r.get('literal_s') or '–'} | {r.get('speedup') or '–'} | {r.get('same_patches') or '–'} | "
                     f"{r.get('same_as_per_image') or '–'} |")
    return "\n".join(lines)
