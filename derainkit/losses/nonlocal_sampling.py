"""NLCL's non-local patch sampler, vectorised and batched, with its anchor sources.

What the official sampler does (``PatchSampleNonlocalOneGroup`` + ``getTensorLocs``, reference note
§2.1): draw an anchor centre (h, w) with ``random.randint(16, H-16)`` then ``randint(16, W-16)``;
take every candidate centre of a 40×40 window around it, clamped near the borders::

    rows from (8 if h-28 < 0 else h-20) to (H-8 if h+28 > H else h+20), half-open; columns alike

(784 to 1600 candidates, visited row-major); score each by the Euclidean distance between its 16×16×C
patch ``[y-8:y+8, x-8:x+8]`` and the anchor's, and keep the k nearest (the anchor itself first, at 0).
The official code builds the candidates with up to 1600 Python-loop ``torch.cat`` calls and only works
for batch size 1.

Here the windows of a whole batch are cut out at once (a (search+patch−1)² region per image), the
squared distances are accumulated over the 16 patch rows with the 16 column offsets unfolded, in
float64, so that rounding cannot reorder near-equal candidates, and a stable sort keeps the k nearest
(exact ties go to the earlier candidate in the official row-major order; the official ``topk`` leaves
ties unspecified, so compare selections as sets). Same patches as the official sampler for the same
anchors, for every image of a batch.

Anchor sources (all with ``draw(name, batch, height, width, margin) -> LongTensor b×2`` of (row, col)):

* ``PythonRandomAnchors``: Python's ``random`` in the official order (row then column, image by image,
  one call per sampler in the order the losses call them), so ``random.seed(0)`` reproduces the
  official anchors;
* ``SeededAnchors``: a pure function of (seed, step, sampler name, image): exact resume without saving
  any RNG state;
* ``FixedAnchors``: given explicitly per sampler name.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

PATCH_SIZE = 16  # official patch_size (the anchor margin too)
SEARCH_SIZE = 40  # official search_size


class AnchorSource(Protocol):
    def draw(self, name: str, batch: int, height: int, width: int, margin: int) -> torch.Tensor:
        """b×2 int64 anchor centres (row, col), each in [margin, size - margin]."""
        ...


def _check_size(height: int, width: int, margin: int) -> None:
    if height < 2 * margin or width < 2 * margin:
        raise ValueError(f"non-local sampling needs maps of at least {2 * margin}×{2 * margin} px, "
                         f"got {height}×{width}")


class PythonRandomAnchors:
    """The official draws: ``rng.randint(margin, H - margin)``, then ``randint(margin, W - margin)``, per image.

    ``rng`` defaults to the ``random`` module itself (the official code's global stream)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random

    def draw(self, name: str, batch: int, height: int, width: int, margin: int) -> torch.Tensor:
        _check_size(height, width, margin)
        pairs = [(self.rng.randint(margin, height - margin), self.rng.randint(margin, width - margin))
                 for _ in range(batch)]
        return torch.tensor(pairs, dtype=torch.long)


class SeededAnchors:
    """Anchors as a pure function of (seed, step, sampler name, image index): uniform on the same range as
    the official draws, independent of how many draws came before (so a resumed run redraws them)."""

    def __init__(self, seed: int, step: int = 0) -> None:
        self.seed, self.step = int(seed), int(step)

    def at(self, step: int) -> "SeededAnchors":
        return SeededAnchors(self.seed, step)

    def draw(self, name: str, batch: int, height: int, width: int, margin: int) -> torch.Tensor:
        _check_size(height, width, margin)
        rng = np.random.default_rng([self.seed, self.step, zlib.crc32(name.encode())])
        rows = rng.integers(margin, height - margin + 1, size=batch)
        cols = rng.integers(margin, width - margin + 1, size=batch)
        return torch.from_numpy(np.stack([rows, cols], axis=1).astype(np.int64))


class FixedAnchors:
    """Anchors given explicitly: ``{name: b×2 (row, col)}`` (e.g. the ones an official run recorded)."""

    def __init__(self, anchors: Mapping[str, torch.Tensor | Sequence[Sequence[int]] | Sequence[int]]) -> None:
        self.anchors = {k: torch.as_tensor(v, dtype=torch.long).reshape(-1, 2) for k, v in anchors.items()}

    def draw(self, name: str, batch: int, height: int, width: int, margin: int) -> torch.Tensor:
        if name not in self.anchors:
            raise KeyError(f"no fixed anchor for sampler {name!r}; given: {sorted(self.anchors)}")
        a = self.anchors[name]
        if a.shape[0] != batch:
            raise ValueError(f"sampler {name!r}: {a.shape[0]} fixed anchors for a batch of {batch}")
        if (a[:, 0] < margin).any() or (a[:, 0] > height - margin).any() or (a[:, 1] < margin).any() \
                or (a[:, 1] > width - margin).any():
            raise ValueError(f"sampler {name!r}: anchors {a.tolist()} outside [{margin}, size - {margin}]")
        return a.clone()


@dataclass(frozen=True)
class NonlocalSample:
    ids: torch.Tensor  # b×k×2 int64 chosen centres (row, col), nearest first
    dist: torch.Tensor  # b×k float32 Euclidean patch distances
    window: torch.Tensor  # b×4 int64 candidate rows [r0, r1) and columns [c0, c1)
    anchors: torch.Tensor  # b×2 int64

    @property
    def n_candidates(self) -> torch.Tensor:
        return (self.window[:, 1] - self.window[:, 0]) * (self.window[:, 3] - self.window[:, 2])


def candidate_windows(anchors: torch.Tensor, height: int, width: int, patch: int = PATCH_SIZE,
                      search: int = SEARCH_SIZE) -> torch.Tensor:
    """b×4 (r0, r1, c0, c1): the official clamped window of candidate centres for each anchor."""
    half, sh = patch // 2, search // 2

    def axis(c: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.where(c - sh - half < 0, torch.full_like(c, half), c - sh)
        end = torch.where(c + sh + half > size, torch.full_like(c, size - half), c + sh)
        return start, end

    r0, r1 = axis(anchors[:, 0], height)
    c0, c1 = axis(anchors[:, 1], width)
    return torch.stack([r0, r1, c0, c1], dim=1)


def _gather_region(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """b×C×len(rows)×len(cols) crops of ``padded`` at per-image row and column index vectors."""
    b = torch.arange(padded.shape[0], device=padded.device)
    return padded[b[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _window_sq_distances(region: torch.Tensor, anchor_patch: torch.Tensor, search: int, patch: int) -> torch.Tensor:
    """b×search×search squared distances between each candidate's patch (in ``region``) and the anchor's."""
    acc = region.new_zeros(region.shape[0], search, search)
    for u in range(patch):  # patch rows; the column offsets are unfolded
        rows = region[:, :, u:u + search, :].unfold(3, patch, 1)  # b×C×search×search×patch
        diff = rows - anchor_patch[:, :, u, None, None, :]
        acc += (diff * diff).sum(dim=(1, 4))
    return acc


_CPU_CHUNK_ELEMENTS = 500_000  # ~4 MB of float64 per temporary: stays in cache on a CPU


def _batched_sq_distances(region: torch.Tensor, anchor_patch: torch.Tensor, search: int, patch: int) -> torch.Tensor:
    """``_window_sq_distances`` over the batch; on a CPU in chunks of images whose temporaries fit in cache
    (a whole batch of 32-channel windows at once is memory-bound and several times slower)."""
    b, c = region.shape[:2]
    if region.device.type != "cpu":
        return _window_sq_distances(region, anchor_patch, search, patch)
    step = max(1, _CPU_CHUNK_ELEMENTS // (c * search * search * patch))
    return torch.cat([_window_sq_distances(region[i:i + step], anchor_patch[i:i + step], search, patch)
                      for i in range(0, b, step)])


@torch.no_grad()
def nonlocal_topk(search_map: torch.Tensor, anchors: torch.Tensor, k: int, patch: int = PATCH_SIZE,
                  search: int = SEARCH_SIZE) -> NonlocalSample:
    """The k patches of ``search_map`` (b×C×H×W) most similar to each image's anchor patch."""
    bsz, _c, height, width = search_map.shape
    anchors = anchors.to(device=search_map.device, dtype=torch.long).reshape(bsz, 2)
    half = patch // 2
    window = candidate_windows(anchors, height, width, patch, search)
    sizes = torch.stack([window[:, 1] - window[:, 0], window[:, 3] - window[:, 2]], dim=1)
    if int(sizes.prod(dim=1).min()) < k:
        raise ValueError(f"non-local sampling: fewer than k={k} candidates for anchors {anchors.tolist()} "
                         f"in a {height}×{width} map")
    length = search + patch - 1
    padded = torch.nn.functional.pad(search_map, (0, search, 0, search))  # windows cut short near borders
    steps = torch.arange(length, device=search_map.device)
    region = _gather_region(padded, window[:, 0:1] - half + steps, window[:, 2:3] - half + steps)
    offs = torch.arange(patch, device=search_map.device)
    anchor_patch = _gather_region(padded, anchors[:, 0:1] - half + offs, anchors[:, 1:2] - half + offs)
    # float64 from here: rounding must not reorder candidates whose distances differ by ~1e-4
    sq = _batched_sq_distances(region.double().contiguous(), anchor_patch.double().contiguous(), search, patch)
    grid = torch.arange(search, device=search_map.device)
    valid = (grid[None, :, None] < sizes[:, 0, None, None]) & (grid[None, None, :] < sizes[:, 1, None, None])
    sq = sq.masked_fill(~valid, float("inf")).flatten(1)
    order = torch.sort(sq, dim=1, stable=True).indices[:, :k]
    ids = torch.stack([window[:, 0:1] + order // search, window[:, 2:3] + order % search], dim=2)
    dist = torch.gather(sq, 1, order).clamp_min(0.0).sqrt().float()
    return NonlocalSample(ids=ids, dist=dist, window=window, anchors=anchors)


def layer_positions(ids: torch.Tensor, search_hw: tuple[int, int], layer_hw: tuple[int, int],
                    faithful: bool) -> torch.Tensor:
    """b×k flat indices (row·W_l + col) into a feature map of size ``layer_hw`` for centres ``ids`` found
    in a ``search_hw`` map.

    ``faithful``: the official ``⌊y·H_l/256⌋, ⌊x·H_l/256⌋`` (256 hard-coded, H_l used for both axes: quirk
    Q3; right only for 256×256 crops). Otherwise ``⌊y·H_l/H⌋, ⌊x·W_l/W⌋``, the same at 256².
    """
    (height, width), (hl, wl) = search_hw, layer_hw
    y, x = ids[..., 0], ids[..., 1]
    if faithful:
        row, col = torch.div(y * hl, 256, rounding_mode="floor"), torch.div(x * hl, 256, rounding_mode="floor")
    else:
        row, col = torch.div(y * hl, height, rounding_mode="floor"), torch.div(x * wl, width, rounding_mode="floor")
    flat = row * wl + col
    if faithful and (row.max() >= hl or col.max() >= wl or flat.max() >= hl * wl):
        raise ValueError(f"faithful NLCL position mapping assumes 256-px crops; a {height}×{width} search map "
                         f"maps outside a {hl}×{wl} layer (use faithful=False for other sizes)")
    return flat


def gather_rows(feat: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """b×k×C: the C-vectors of ``feat`` (b×C×H×W) at flat positions ``flat`` (b×k)."""
    b, c = feat.shape[:2]
    return torch.gather(feat.flatten(2), 2, flat[:, None, :].expand(b, c, flat.shape[1])).transpose(1, 2)
