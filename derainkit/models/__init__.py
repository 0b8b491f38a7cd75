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

from derainkit.errors import CheckpointError, ConfigError
from derainkit.models.msgnn import MSGNN, MSGNNConfig, load_official_state_dict
from derainkit.models.prenet import PReNet, PReNetConfig, load_prenet_weights


def _load_msgnn_weights(model: nn.Module, path: Path) -> nn.Module:
    """Official MSGNN checkpoints (.pth, official or kit key names) or kit .safetensors exports."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from derainkit.train.checkpoint import read_exported

        state, _meta = read_exported(path)
        try:
            return load_official_state_dict(model, state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return load_official_state_dict(model, path)


SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def _shipped(name: str) -> Path | None:
    """A checkpoint shipped in derainkit/weights/ (see its README.md for how it was trained), if present."""
    path = SHIPPED_WEIGHTS_DIR / name
    return path if path.is_file() else None


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
    "msgnn": ModelSpec(
        name="msgnn",
        description="MSGNN (Wang et al., IJCAI-24), multi-scale graph network with exemplar; variants code|paper",
        config_from_dict=MSGNNConfig.from_dict,
        build=MSGNN,
        load_weights=_load_msgnn_weights,
        # the official eval.py scores floats (msgnn-rgb); for uint8 protocols we round, as saved PNGs are
        official_quantize="round",
        infer_bytes_per_pixel=4000.0,  # 3.06 GB extra measured at 1024x1024 (~2.9 kB/px) plus headroom
        uses_exemplar=True,
        default_weights=_shipped("msgnn_raintrainl.safetensors"),
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
    path = Path(weights) if weights is not None else spec.default_weights
    if config is None and path is not None and path.suffix == ".safetensors":
        config = _exported_config(path, name)
    model = spec.build(spec.config_from_dict(config))
    if path is not None:
        spec.load_weights(model, path)
    return model.to(device).eval()


def _exported_config(path: Path, name: str) -> Mapping[str, Any] | None:
    """The model config stored in a kit ``.safetensors`` export (so weights rebuild their own network)."""
    from derainkit.train.checkpoint import read_exported

    _state, meta = read_exported(path)
    if meta.get("model") not in (None, name):
        raise CheckpointError(f"{path}: holds weights of model {meta['model']!r}, not {name!r}")
    return meta.get("model_config")
