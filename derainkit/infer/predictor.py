"""A model bound to a device and a tiling policy: numpy image in, numpy image out."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from derainkit.errors import DerainkitError
from derainkit.infer.tiling import Blend, TilePlan, plan_tiles, run_tiled
from derainkit.io import image_to_tensor, tensor_to_image

if TYPE_CHECKING:
    from derainkit.models import ModelSpec


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
                 forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None, label: str = "",
                 whole_frame_norm: bool = False) -> None:
        self.device = resolve_device(device)
        self.label = label or type(model).__name__
        # InstanceNorm over the whole frame (NLCL): tiles run stage by stage with whole-image statistics
        # (derainkit.infer.frame_norm), equal to full-frame inference instead of blended approximations.
        self.whole_frame_norm = whole_frame_norm
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
        if self.whole_frame_norm and plan.tile is not None:
            import dataclasses

            from derainkit.infer.frame_norm import frame_norm_tiled

            # exact halos, nothing blended: record what was done
            plan = dataclasses.replace(plan, overlap=0, blend="frame-norm",
                                       reason=f"{plan.reason}; whole-frame InstanceNorm statistics")
            out = frame_norm_tiled(self.model, image_to_tensor(pixels), plan, self.device, progress=progress)
        else:
            out = run_tiled(lambda x: self._forward(self.model, x), image_to_tensor(pixels), plan, self.device,
                            progress=progress)
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise DerainkitError(f"the model ({self.label}) produced {bad} non-finite values (NaN/inf): its weights "
                                 "are damaged or the run that made them diverged; nothing was written")
        return tensor_to_image(out), plan

    def predict_fn(self) -> Callable[[np.ndarray, object], tuple[np.ndarray, dict]]:
        """``(rainy, pair) -> (derained, {"tiling": plan})``: what ``metrics.evaluate`` calls."""
        def predict(rainy: np.ndarray, _pair: object) -> tuple[np.ndarray, dict]:
            out, plan = self(rainy)
            return out, {"tiling": plan.to_dict()}

        return predict


def load_predictor(model: str, weights: str | Path | None = None, config: Mapping[str, Any] | None = None,
                   device: str | torch.device = "auto", tile: int | str | None = "auto", overlap: int = 32,
                   blend: Blend = "linear") -> tuple["ModelSpec", Predictor]:
    """(registry entry, predictor) for a model name with its weights (default: the shipped ones): the one
    way the CLI and the Lab turn a name and a file into something that derains images."""
    from derainkit.models import build_model, get_model_spec

    spec = get_model_spec(model)
    if weights is None and spec.default_weights is None:
        raise DerainkitError(f"model {model!r} ships no weights; pass --weights FILE")
    net = build_model(model, dict(config) if config is not None else None, weights)
    label = f"{model}, weights {weights or spec.default_weights}"
    return spec, Predictor(net, spec.infer_bytes_per_pixel, device=device, tile=tile, overlap=overlap, blend=blend,
                           label=label, whole_frame_norm=spec.whole_frame_norm)
