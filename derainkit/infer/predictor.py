"""A model bound to a device and a tiling policy: numpy image in, numpy image out."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from derainkit.errors import DerainkitError
from derainkit.infer.tiling import Blend, TilePlan, plan_tiles, run_tiled
from derainkit.io import image_to_tensor, tensor_to_image


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" picks CUDA when available; an explicit "cuda" without a GPU is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DerainkitError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return device


class Predictor:
    """Runs ``model`` on H×W×3 float RGB arrays, whole or tiled, and reports the tiling it used."""

    def __init__(self, model: nn.Module, bytes_per_pixel: float, device: str | torch.device = "auto",
                 tile: int | str | None = "auto", overlap: int = 32, blend: Blend = "linear",
                 memory_budget: int | None = None,
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.bytes_per_pixel = bytes_per_pixel
        self.tile, self.overlap, self.blend, self.memory_budget = tile, overlap, blend, memory_budget
        self._forward = forward or (lambda m, x: m(x))

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_tiles(height, width, self.bytes_per_pixel, self.device, self.tile, self.overlap, self.blend,
                          self.memory_budget)

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray, progress: bool = False) -> tuple[np.ndarray, TilePlan]:
        plan = self.plan(*pixels.shape[:2])
        out = run_tiled(lambda x: self._forward(self.model, x), image_to_tensor(pixels), plan, self.device,
                        progress=progress)
        return tensor_to_image(out), plan
