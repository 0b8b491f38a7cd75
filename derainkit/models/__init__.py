"""Model registry: a plain dict from model name to how to build it, load weights and run it.

No decorators or config indirection: each entry says which typed config the model takes, how
official or kit weights are loaded, how its official test script turned outputs into uint8
(so a protocol can reproduce published numbers), and roughly how much memory inference needs
per pixel (so tiling can be planned before running out of memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from derainkit.errors import ConfigError
from derainkit.models.prenet import PReNet, PReNetConfig, load_prenet_weights


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config_from_dict: Callable[[Mapping[str, Any] | None], Any]
    build: Callable[[Any], nn.Module]
    load_weights: Callable[[nn.Module, Path], nn.Module]
    official_quantize: str  # "trunc" or "round": what the official test script did before scoring
    infer_bytes_per_pixel: float  # measured peak inference memory per input pixel (fp32, CPU)
    uses_exemplar: bool = False
    default_weights: Path | None = None  # weights shipped with the kit, if any


MODELS: dict[str, ModelSpec] = {
    "prenet": ModelSpec(
        name="prenet",
        description="PReNet (Ren et al., CVPR 2019), 6 recurrent stages; loads the official weights",
        config_from_dict=PReNetConfig.from_dict,
        build=PReNet,
        load_weights=load_prenet_weights,
        official_quantize="trunc",  # official test_PReNet.py: np.uint8(255 * clamp(out, 0, 1))
        infer_bytes_per_pixel=3000.0,  # ~2.5 kB/px measured at 512x512 on CPU, rounded up
    ),
}


def register(spec: ModelSpec) -> None:
    MODELS[spec.name] = spec


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, config: Mapping[str, Any] | None = None, weights: str | Path | None = None,
                device: torch.device | str = "cpu") -> nn.Module:
    """Build a registered model in eval mode on ``device``, with weights if given (or shipped)."""
    spec = get_model_spec(name)
    model = spec.build(spec.config_from_dict(config))
    path = Path(weights) if weights is not None else spec.default_weights
    if path is not None:
        spec.load_weights(model, path)
    return model.to(device).eval()
