"""Tiled inference that keeps whole-frame InstanceNorm statistics (exact, not approximated at seams).

A network with InstanceNorm over the whole frame (NLCL's generators) gives different results on tiles:
each tile normalises with its own statistics. This module runs such a network *stage by stage* over
the full frame, one tile at a time, so that every InstanceNorm sees the statistics of the whole image:

1. The model is a list of stages (``model.frame_norm_stages()`` when it has one, else the children of
   an ``nn.Sequential``, else the model as one stage). Each stage maps a full-frame tensor to a
   full-frame tensor of the same height and width, and holds only stride-1 convolutions and pointwise
   operations (plus the InstanceNorms).
2. For each stage, for each InstanceNorm inside it in call order: a pass over all tiles, each tile
   widened by a halo of the stage's receptive radius and run up to that norm (the earlier norms already
   frozen), taking the per-channel mean and variance of the norm's input over the tile's own (non-halo)
   pixels; these combine (in float64) into the whole-frame mean and biased variance, to which that norm
   is then frozen.
3. A last pass over the tiles computes the stage's output; the halo is cropped off, so every output
   pixel sees exactly the neighbours it sees in a full-frame run.

Cost: a stage's norm that comes *first* in it costs one cheap pass (nothing runs before the norm); a
norm deeper in a stage costs a rerun of the stage up to it. Models make their stages start at their
norms (``NLCLDerain.frame_norm_stages``) to run at about the cost of one full-frame inference. Memory:
the stage's input and output frames (on the CPU) plus one tile's activations on ``device``.

The receptive radius of a stage is ``stage.frame_norm_halo`` if set, else Σ dilation·(k−1)/2 over its
``nn.Conv2d`` modules, an upper bound for any composition of them. Stride-2 or other resolution-changing
stages are refused. Results equal full-frame inference up to float summation order (about 1e-6).

Plugging into ``derainkit.infer.Predictor``: ``frame_norm_tiled(model, image, plan, device, progress)``
has ``run_tiled``'s arguments with the model in place of the function; ``plan.overlap`` and
``plan.blend`` are not used (halos are exact, nothing is blended).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from derainkit.infer.tiling import TilePlan

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)


class _Stop(Exception):
    """Ends a measuring pass once the measured norm has seen its input."""


def model_stages(model: nn.Module) -> list[nn.Module]:
    """The stages ``run_frame_norm`` processes one after the other."""
    if hasattr(model, "frame_norm_stages"):
        return list(model.frame_norm_stages())
    if isinstance(model, nn.Sequential):
        return list(model)
    return [model]


def receptive_radius(stage: nn.Module) -> int:
    """Pixels of context an output pixel of ``stage`` needs on each side."""
    halo = getattr(stage, "frame_norm_halo", None)
    if halo is not None:
        return int(halo)
    radius = 0
    for m in stage.modules():
        if isinstance(m, nn.Conv2d):
            if tuple(m.stride) != (1, 1):
                raise ValueError(f"frame-norm tiling needs stride-1 convolutions; {m} changes the resolution")
            radius += max(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
    return radius


def _uses_instance_stats(m: nn.Module) -> bool:
    return isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats)


def _tiles(height: int, width: int, tile: int) -> list[Box]:
    return [(y, min(y + tile, height), x, min(x + tile, width))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def _widen(box: Box, halo: int, height: int, width: int) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)


class _FrozenNorm:
    """An InstanceNorm's forward with whole-frame statistics (biased variance, eps inside the sqrt)."""

    def __init__(self, norm: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
        inv_std = 1.0 / torch.sqrt(var.clamp_min(0.0) + norm.eps)
        # one fused pass per tile: x·inv_std + (−mean·inv_std)
        self.scale = inv_std.float()[:, :, None, None]
        self.shift = (-mean * inv_std).float()[:, :, None, None]
        self.norm = norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.shift.to(x.device), x, self.scale.to(x.device))
        if self.norm.affine:
            out = out * self.norm.weight[None, :, None, None] + self.norm.bias[None, :, None, None]
        return out


def _combine(parts: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-frame mean and biased variance from per-tile (count, mean, variance), in float64
    (Chan et al.'s pairwise rule: no catastrophic cancellation, unlike Σx² − n·mean²)."""
    count = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / count
    m2 = sum(n * (v + (m - mean) ** 2) for n, m, v in parts)
    return mean, m2 / count


def _norms_in_call_order(stage: nn.Module, probe: torch.Tensor) -> list[nn.InstanceNorm2d]:
    """The stage's instance-statistics norms in the order a forward pass calls them (one probe run)."""
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda mod, _args: order.append(mod))
               for m in stage.modules() if _uses_instance_stats(m)]
    try:
        out = stage(probe)
    finally:
        for h in handles:
            h.remove()
    if out.shape[2:] != probe.shape[2:]:
        raise ValueError(f"frame-norm stage {type(stage).__name__} maps {tuple(probe.shape[2:])} to "
                         f"{tuple(out.shape[2:])}; stages must keep the resolution")
    if len(set(map(id, order))) != len(order):
        raise ValueError(f"frame-norm stage {type(stage).__name__} calls an InstanceNorm twice; split it")
    return order  # type: ignore[return-value]


def _tile_inputs(frame: torch.Tensor, boxes: Sequence[Box], halo: int,
                 device: torch.device) -> Iterator[tuple[Box, Box, torch.Tensor]]:
    height, width = frame.shape[2:]
    for box in boxes:
        wide = _widen(box, halo, height, width)
        yield box, wide, frame[:, :, wide[0]:wide[1], wide[2]:wide[3]].to(device)


def _measure(stage: nn.Module, norm: nn.InstanceNorm2d, frame: torch.Tensor, boxes: Sequence[Box], halo: int,
             device: torch.device) -> _FrozenNorm:
    parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    current: list[tuple[Box, Box]] = []

    def hook(_mod: nn.Module, args: tuple) -> None:
        (y0, y1, x0, x1), (wy, _, wx, _) = current[-1]
        inner = args[0][:, :, y0 - wy:y1 - wy, x0 - wx:x1 - wx]
        var, mean = torch.var_mean(inner, dim=(2, 3), unbiased=False)
        parts.append(((y1 - y0) * (x1 - x0), mean.double().cpu(), var.double().cpu()))
        raise _Stop

    handle = norm.register_forward_pre_hook(hook)
    try:
        for box, wide, x in _tile_inputs(frame, boxes, halo, device):
            current.append((box, wide))
            try:
                stage(x)
            except _Stop:
                pass
            else:
                raise RuntimeError(f"{norm} was not reached when running {type(stage).__name__}")
    finally:
        handle.remove()
    return _FrozenNorm(norm, *_combine(parts))


def _run_stage(stage: nn.Module, frame: torch.Tensor, tile: int, device: torch.device,
               spares: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The stage's output frame, written into a free frame taken from ``spares`` when one has the right shape
    (a chain of stages then reuses two buffers instead of faulting in fresh memory at every stage); a spare
    of another shape is released before a new frame is allocated."""
    height, width = frame.shape[2:]
    halo = receptive_radius(stage)
    boxes = _tiles(height, width, tile)
    probe = frame[:, :, :min(height, 16), :min(width, 16)].to(device)
    norms = _norms_in_call_order(stage, probe)
    try:
        for norm in norms:
            norm.forward = _measure(stage, norm, frame, boxes, halo, device)  # type: ignore[method-assign]
        out: torch.Tensor | None = None
        for (y0, y1, x0, x1), (wy, _, wx, _), x in _tile_inputs(frame, boxes, halo, device):
            pred = stage(x)[:, :, y0 - wy:y1 - wy, x0 - wx:x1 - wx]
            if out is None:
                shape = (frame.shape[0], pred.shape[1], height, width)
                spare = spares.pop() if spares else None
                out = spare if spare is not None and spare.shape == shape else None
                del spare
                if out is None:
                    out = torch.empty(shape)
            out[:, :, y0:y1, x0:x1] = pred
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)  # back to the class's forward
    assert out is not None
    return out


@torch.no_grad()
def run_frame_norm(model: nn.Module | Sequence[nn.Module], image: torch.Tensor, tile: int,
                   device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """``model(image)`` with whole-frame InstanceNorm statistics, computed ``tile``×``tile`` pixels at a time.

    ``image``: b×c×H×W on the CPU. Returns the output on the CPU as float32.
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    stages = model_stages(model) if isinstance(model, nn.Module) else list(model)
    device = torch.device(device)
    frame, spares = image.float().cpu(), []
    for stage in tqdm(stages, desc="frame-norm stages", disable=not progress, leave=False):
        out = _run_stage(stage, frame, tile, device, spares)
        if frame is not image:  # never write into the caller's image
            spares.append(frame)
        frame = out
    return frame


def frame_norm_tiled(model: nn.Module, image: torch.Tensor, plan: TilePlan, device: torch.device | str = "cpu",
                     progress: bool = False) -> torch.Tensor:
    """``run_tiled``'s contract for models with whole-frame InstanceNorm: whole image in one call when
    ``plan.tile`` is None, else ``run_frame_norm`` with ``plan.tile``-pixel tiles (exact; no blending)."""
    if plan.tile is None:
        return model(image.to(device)).float().cpu()
    return run_frame_norm(model, image, plan.tile, device, progress)


def frame_norm_forward(tile: int, device: torch.device | str = "cpu") -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A ``Predictor(forward=...)`` hook running ``run_frame_norm`` on whatever the predictor passes in (use
    it with the predictor's own tiling disabled, ``tile=None``, so that it receives the whole image)."""
    return lambda model, x: run_frame_norm(model, x.cpu(), tile, device).to(x.device)


def frame_bytes_per_pixel(max_channels: int, in_channels: int = 3, out_channels: int = 3) -> float:
    """Host memory per pixel the frame buffers need: a stage's input and output frames at the widest state,
    plus the image and the result (float32)."""
    return 4.0 * (2 * max_channels + in_channels + out_channels)


__all__ = ["run_frame_norm", "frame_norm_tiled", "frame_norm_forward", "model_stages", "receptive_radius",
           "frame_bytes_per_pixel"]
