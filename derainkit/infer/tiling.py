"""Full-image or tiled inference, with the tiling recorded.

A whole image is processed in one call when the model's estimated peak memory fits the budget;
otherwise it is cut into overlapping tiles whose outputs are blended. Tiling is not neutral for
graph models (a tile limits the kNN search domain and changes the image pyramid near its
borders), so the chosen ``TilePlan`` travels with every result.

The full-size output accumulates on the CPU and only one tile at a time visits the device, so a
12-megapixel photo never needs device memory for more than a tile (Real-ESRGAN's tiling moved
the whole image to the GPU first and still ran out of memory).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from derainkit.sysmem import available_memory

Blend = Literal["linear", "average"]
MIN_TILE = 64  # smallest tile side: below it the overlap and a graph model's patch grid leave too little context


@dataclass(frozen=True)
class TilePlan:
    tile: int | None  # square tile side in pixels; None = the whole image in one call
    overlap: int
    blend: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan_tiles(height: int, width: int, bytes_per_pixel: float, device: torch.device | str = "cpu",
               tile: int | str | None = "auto", overlap: int = 32, blend: Blend = "linear",
               memory_budget: int | None = None, min_tile: int = MIN_TILE) -> TilePlan:
    """Choose whole-image or tiled inference.

    ``tile``: "auto" (whole image if it fits ``memory_budget``, else the largest square tile that
    does), None/"none" (never tile), or an int (always tile with that side when the image is
    larger). ``bytes_per_pixel`` is the model's peak inference memory per input pixel.
    """
    if blend not in ("linear", "average"):
        raise ValueError(f"blend must be 'linear' or 'average', got {blend!r}")
    if tile in (None, "none"):
        return TilePlan(None, 0, blend, "tiling disabled")
    if isinstance(tile, int) or (isinstance(tile, str) and tile.isdigit()):
        side = int(tile)
        if side < min_tile:
            raise ValueError(f"tile must be at least {min_tile} pixels, got {side}")
        if overlap * 2 >= side:
            raise ValueError(f"overlap {overlap} must be less than half the tile {side}")
        if height <= side and width <= side:
            return TilePlan(None, 0, blend, f"image {height}x{width} fits in one {side} tile")
        return TilePlan(side, overlap, blend, "tile size given")
    if tile != "auto":
        raise ValueError(f"tile must be 'auto', 'none' or a number of pixels, got {tile!r}")
    budget = memory_budget if memory_budget is not None else int(0.6 * available_memory(device))
    need = bytes_per_pixel * height * width
    if need <= budget:
        # the reason names only what depends on the image, so records of reruns are identical
        return TilePlan(None, 0, blend, f"fits the memory budget (~{need / 2**20:.0f} MiB needed)")
    # the tile's own memory includes its overlap margins
    side = int(math.sqrt(budget / bytes_per_pixel))
    side = max(min_tile, side - side % 8)
    overlap = min(overlap, side // 4)
    return TilePlan(side, overlap, blend,
                    f"~{need / 2**20:.0f} MiB needed exceeds the {torch.device(device).type} memory budget")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length) with at least ``overlap`` shared pixels; the last is flush."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights: linear ramps over the overlap at inner edges, flat elsewhere."""
    w = torch.ones(n)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if not at_start:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if not at_end:
            w[n - overlap:] = torch.minimum(w[n - overlap:], ramp.flip(0))
    return w


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, plan: TilePlan,
              device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """Apply ``fn`` (b×3×h×w -> b×3×h×w on ``device``) to a CPU image b×3×H×W following ``plan``.

    Returns the output on the CPU as float32.
    """
    device = torch.device(device)
    if plan.tile is None:
        return fn(image.to(device)).float().cpu()
    b, c, height, width = image.shape
    tile, overlap = plan.tile, plan.overlap
    out = torch.zeros(b, c, height, width)
    weight = torch.zeros(1, 1, height, width)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    boxes = [(y, x) for y in ys for x in xs]
    for y, x in tqdm(boxes, desc="tiles", disable=not progress, leave=False):
        th, tw = min(tile, height - y), min(tile, width - x)
        pred = fn(image[:, :, y:y + th, x:x + tw].to(device)).float().cpu()
        if plan.blend == "linear":
            wy = _ramp(th, overlap, y == 0, y + th == height)
            wx = _ramp(tw, overlap, x == 0, x + tw == width)
            w = (wy[:, None] * wx[None, :])[None, None]
        else:
            w = torch.ones(1, 1, th, tw)
        out[:, :, y:y + th, x:x + tw] += pred * w
        weight[:, :, y:y + th, x:x + tw] += w
    return out / weight
