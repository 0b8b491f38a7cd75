"""A literal port of the official NLCL non-local sampler's search, for benchmarking and cross-checking only.

Reconstructed from the description of ``PatchSampleNonlocalOneGroup.forward`` and ``getTensorLocs`` in
``shared/reference/nlcl-official-code.md`` §2.1 (official yunguo224/NLCL @ f4b44ac): one candidate at a
time, in row-major order over the clamped 40×40 window, each appended with ``torch.cat`` to a growing
tensor of locations and a growing tensor of patches (quadratic copying), then the Euclidean distance of
every stacked patch to the anchor patch and ``torch.topk`` of the smallest. Batch size 1 only, like the
official code. The kit's sampler is ``derainkit.losses.nonlocal_sampling.nonlocal_topk``.
"""
from __future__ import annotations

import torch


def literal_window(center: int, size: int, half: int, search_half: int) -> tuple[int, int]:
    """The official clamp of the candidate range along one axis (half-open)."""
    start = half if center - search_half - half < 0 else center - search_half
    end = size - half if center + search_half + half > size else center + search_half
    return start, end


@torch.no_grad()
def literal_nonlocal_topk(image: torch.Tensor, anchor: tuple[int, int], k: int, patch: int = 16,
                          search: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids k×2 as (row, col), distances k) for a 1×C×H×W map, the official way."""
    if image.shape[0] != 1:
        raise ValueError("the official sampler supports batch size 1 only")
    half, search_half = patch // 2, search // 2
    height, width = image.shape[2], image.shape[3]
    h, w = int(anchor[0]), int(anchor[1])
    anchor_patch = image[:, :, h - half:h + half, w - half:w + half]
    r0, r1 = literal_window(h, height, half, search_half)
    c0, c1 = literal_window(w, width, half, search_half)
    locs = torch.zeros((1, 2), device=image.device)
    patches = torch.zeros((1, image.shape[1], patch, patch), device=image.device)
    for y in range(r0, r1):
        for x in range(c0, c1):
            locs = torch.cat((locs, torch.tensor([[y, x]], device=image.device)), 0)
            patches = torch.cat((patches, image[:, :, y - half:y + half, x - half:x + half]), 0)
    locs, patches = locs[1:], patches[1:]
    dist = torch.sqrt(torch.sum((patches - anchor_patch) ** 2, dim=(1, 2, 3)))
    score, index = torch.topk(dist, k, largest=False, sorted=True)
    return locs[index].to(torch.long), score
