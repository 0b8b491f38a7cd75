"""SPANet's four-direction IRNN: the kit's fast scan (``derainkit.models.irnn.irnn``) against the literal
per-step loop (``irnn_loop``), same inputs, same process, one torch thread for both.

Rows (results/bench/irnn.csv), 32 channels (SPANet's), batch 1, weights drawn like trained ones
(w in [-0.5, 1), b in [-0.3, 0.3)):

  pass=forward   inference (no autograd) at 256², 512² and 1 MP (1024²)
  pass=train     forward + backward at 256² (SPANet's training crop)

``speedup`` = loop_s / fast_s; ``max_rel_diff`` is the largest difference between the two outputs (for
train: any of the three gradients) over the largest magnitude (float rounding only: the fast scan adds
the same terms in another order). Absolute times depend on
the machine; the ratio is the figure to compare. ``--quick``: 256² only, one repeat.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.common import device_name, loadavg, time_it, write_csv

CHANNELS = 32
SIZES = {"256x256": (256, 256), "512x512": (512, 512), "1MP": (1024, 1024)}


def _inputs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(h * 10007 + w)
    x = torch.randn(1, CHANNELS, h, w, generator=g)
    weight = torch.rand(4, CHANNELS, generator=g) * 1.5 - 0.5
    bias = (torch.rand(4, CHANNELS, generator=g) - 0.5) * 0.6
    return x, weight, bias


def _rel_diff(fast: torch.Tensor, loop: torch.Tensor) -> float:
    """Largest difference relative to the largest value (the recurrence sums up to n terms)."""
    return ((fast - loop).abs().max() / loop.abs().max().clamp_min(1e-30)).item()


def _forward_row(label: str, h: int, w: int, repeats: int) -> dict:
    from derainkit.models.irnn import irnn, irnn_loop

    x, weight, bias = _inputs(h, w)
    with torch.no_grad():
        fast = time_it(lambda: irnn(x, weight, bias), repeats=repeats)
        loop = time_it(lambda: irnn_loop(x, weight, bias), repeats=repeats)
        diff = _rel_diff(irnn(x, weight, bias), irnn_loop(x, weight, bias))
    return {"pass": "forward", "size": label, "height": h, "width": w, "fast_s": round(fast, 4),
            "loop_s": round(loop, 4), "speedup": round(loop / fast, 2), "max_rel_diff": f"{diff:.2e}"}


def _train_row(label: str, h: int, w: int, repeats: int) -> dict:
    from derainkit.models.irnn import irnn, irnn_loop

    x, weight, bias = (t.requires_grad_() for t in _inputs(h, w))
    grad = torch.randn(1, 4, CHANNELS, h, w, generator=torch.Generator().manual_seed(1))

    def step(fn):
        return lambda: torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), grad_outputs=grad)

    fast, loop = time_it(step(irnn), repeats=repeats), time_it(step(irnn_loop), repeats=repeats)
    diff = max(_rel_diff(a, b) for a, b in zip(step(irnn)(), step(irnn_loop)()))
    return {"pass": "train", "size": label, "height": h, "width": w, "fast_s": round(fast, 4),
            "loop_s": round(loop, 4), "speedup": round(loop / fast, 2), "max_rel_diff": f"{diff:.2e}"}


def run(out_dir: Path, quick: bool) -> list[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        repeats = 1 if quick else 3
        sizes = {"256x256": SIZES["256x256"]} if quick else SIZES
        rows = [_forward_row(label, h, w, repeats if h * w < 2 ** 20 else 1) for label, (h, w) in sizes.items()]
        rows.append(_train_row("256x256", 256, 256, repeats))
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        row.update({"channels": CHANNELS, "device": device_name("cpu"), "threads": 1, "loadavg": loadavg()})
        print(f"   {row['pass']} {row['size']}: fast {row['fast_s']} s, loop {row['loop_s']} s, "
              f"x{row['speedup']}, max diff {row['max_rel_diff']}", flush=True)
    path = out_dir / ("irnn-quick.csv" if quick else "irnn.csv")
    write_csv(path, rows)
    return [path]


def summarize(paths: list[Path]) -> str:
    import csv

    rows = list(csv.DictReader(paths[0].open()))
    lines = ["## SPANet IRNN: fast scan vs literal per-step loop (CPU, 1 thread, 32 channels, batch 1)", "",
             "| pass | size | fast (s) | loop (s) | speedup | max rel diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pass']} | {r['size']} | {r['fast_s']} | {r['loop_s']} | {r['speedup']} | "
                     f"{r['max_rel_diff']} |")
    return "\n".join(lines)
