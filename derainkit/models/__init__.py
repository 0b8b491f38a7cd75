"""Model registry: a plain dict from model name to how to build it, load weights and run it.

No decorators or config indirection: each entry says which typed config the model takes, how
official or kit weights are loaded, how its official test script turned outputs into uint8
(so a protocol can reproduce published numbers), roughly how much memory inference needs per pixel
(so tiling can be planned before running out of memory), and which training task trains it.

:func:`build_model` is the one way from a name and/or a weights file to a network: a kit
``.safetensors`` export carries its model name and config, so ``build_model(weights=path)`` rebuilds
exactly the network that was trained. Model modules are imported when first built, so reading the
registry (e.g. to validate a run config) does not load the networks or the kNN engine.
"""
from __future__ import annotations

import importlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from derainkit.errors import CheckpointError, ConfigError, naming_file
from derainkit.lazy import lazy
from derainkit.weights import read_metadata, shipped


def _msgnn_weights(model: nn.Module, path: Path) -> nn.Module:
    """Official MSGNN checkpoints (.pth, official or kit key names) or kit .safetensors exports."""
    from derainkit.models.msgnn import load_official_state_dict

    return naming_file(path, lambda: load_official_state_dict(model, path))


def _msgnn_exemplar_on(config: Any) -> bool:
    return "exemplar" in config.branches  # the exemplar branch exists only with the graph on


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    config_from_dict: Callable[[Mapping[str, Any] | None], Any]
    build: Callable[[Any], nn.Module]
    load_weights: Callable[[nn.Module, Path], nn.Module]
    official_quantize: str  # "trunc" or "round": what the official test script did before scoring
    infer_bytes_per_pixel: float  # measured peak inference memory per input pixel (fp32, CPU)
    uses_exemplar: bool = False  # the family has an exemplar input (forward(x, exemplar=...))
    default_weights: Path | None = None  # weights shipped with the kit, if any
    task: str = "paired"  # the training task that trains it by default (a name in the tasks registry of train)
    exemplar_on: Callable[[Any], bool] | None = None  # from a config: is the exemplar branch on?
    # Its own paper's training recipe as run-config overrides (loss, optimizer, lr, schedule, crop ...), or
    # "module:NAME" of such a dict (read when asked for); `derainkit train --model NAME` starts from it.
    # MSGNN's is the RunConfig defaults themselves.
    recipe: Mapping[str, Any] | str = field(default_factory=dict)
    whole_frame_norm: bool = False  # InstanceNorm over the whole frame: tile with whole-image statistics
    static_graph: bool = True  # DDP: every training step uses every trainable parameter (False: some sit idle)

    def run_recipe(self) -> dict[str, Any]:
        """The recipe as a dict of run-config overrides (tuples as lists)."""
        recipe = self.recipe
        if isinstance(recipe, str):
            module, _, attr = recipe.partition(":")
            recipe = getattr(importlib.import_module(module), attr)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(recipe).items()}

    def takes_exemplar(self, config: Any) -> bool:
        """Whether a network built from ``config`` takes an exemplar: the family has the input and the
        config keeps the branch on (``exemplar_on``, else a boolean ``exemplar`` field, else yes)."""
        if not self.uses_exemplar:
            return False
        if self.exemplar_on is not None:
            return bool(self.exemplar_on(config))
        return bool(getattr(config, "exemplar", True))


def _peer(name: str, module: str, cls: str, description: str, quantize: str, bytes_per_pixel: float,
          config: str | None = None, weights: str | None = None, static_graph: bool = True) -> ModelSpec:
    """A peer's entry: ``derainkit.models.<module>`` holds ``<cls>``, ``<cls>Config``, ``load_<module>_weights``
    and its paper's ``RECIPE``. ``quantize``: what its official test script did; memory measured at 512²."""
    where = f"derainkit.models.{module}"
    return ModelSpec(name=name, description=description,
                     config_from_dict=lazy(where, config or f"{cls}Config.from_dict"), build=lazy(where, cls),
                     load_weights=lazy(where, weights or f"load_{module}_weights"), official_quantize=quantize,
                     infer_bytes_per_pixel=bytes_per_pixel, static_graph=static_graph, recipe=f"{where}:RECIPE")


MODELS: dict[str, ModelSpec] = {
    "prenet": ModelSpec(
        name="prenet",
        description="PReNet (Ren et al., CVPR 2019), 6 recurrent stages; loads the official weights",
        config_from_dict=lazy("derainkit.models.prenet", "PReNetConfig.from_dict"),
        build=lazy("derainkit.models.prenet", "PReNet"),
        load_weights=lazy("derainkit.models.prenet", "load_prenet_weights"),
        official_quantize="trunc",  # official test_PReNet.py: np.uint8(255 * clamp(out, 0, 1))
        infer_bytes_per_pixel=3000.0,  # ~2.5 kB/px measured at 512x512 on CPU, rounded up
        recipe="derainkit.models.prenet:RECIPE",
    ),
    "msgnn": ModelSpec(
        name="msgnn",
        description="MSGNN (Wang et al., IJCAI-24), multi-scale graph network with exemplar; variants code|paper",
        config_from_dict=lazy("derainkit.models.msgnn.config", "MSGNNConfig.from_dict"),
        build=lazy("derainkit.models.msgnn.model", "MSGNN"),
        load_weights=_msgnn_weights,
        # the official eval.py scores floats (msgnn-rgb); for uint8 protocols we round, as saved PNGs are
        official_quantize="round",
        infer_bytes_per_pixel=4000.0,  # 3.06 GB extra measured at 1024x1024 (~2.9 kB/px) plus headroom
        uses_exemplar=True,
        default_weights=shipped("msgnn_raintrainl.safetensors"),
        exemplar_on=_msgnn_exemplar_on,
    ),
    # Table 1 peers (issue 14); each recipe is its own paper's training (the modules cite the sources).
    **{spec.name: spec for spec in (
        _peer("spanet", "spanet", "SPANet",
              "SPANet (Wang et al., CVPR 2019), attention from four-direction IRNNs; official weights trained on "
              "SPA-Data real rain", "round", 2500.0, static_graph=False),
        _peer("drn", "drn", "DRN", "DRN, dual recursive network (csdwren/DRN), inter 7 / intra 7; official "
              "Rain100L/H weights", "trunc", 1000.0),
        _peer("rescan", "rescan", "RESCAN", "RESCAN (Li et al., ECCV 2018), GRU, 4 stages; no official weights",
              "round", 3500.0),
        _peer("dcsfn", "dcsfn", "DCSFN", "DCSFN (Wang et al., ACM MM 2020), cross-scale fusion with GRUs; no "
              "official weights", "round", 10000.0),
        _peer("mspfn", "mspfn", "MSPFN", "MSPFN (Jiang et al., CVPR 2020), multi-scale progressive fusion, from the "
              "official TF graph; no official weights", "trunc", 9000.0, static_graph=False),
        _peer("rcdnet", "rcdnet", "RCDNet", "RCDNet (Wang et al., CVPR 2020), rain convolutional dictionary, 17 "
              "stages; no official weights", "round", 5000.0, static_graph=False),
        _peer("dualgcn", "dualgcn", "DualGCN", "DualGCN (Fu et al., AAAI 2021), spatial and channel GCNs, from the "
              "official TF graph; no official weights", "trunc", 8500.0),
        _peer("moss", "moss", "MOSS", "MOSS generator (Huang et al., CVPR 2021), supervised branch only (no "
              "semi-supervised memory training); no official weights", "trunc", 1500.0, static_graph=False),
        _peer("prn", "prenet", "PReNet", "PRN (PReNet release): PReNet without the LSTM", "trunc", 1500.0,
              config="prn_config_from_dict", weights="load_prenet_weights"),
        _peer("prenet_r", "prenet", "PReNet", "PReNet_r (PReNet release): one recursively applied residual block",
              "trunc", 3000.0, config="prenet_r_config_from_dict", weights="load_prenet_weights"),
        _peer("prn_r", "prenet", "PReNet", "PRN_r (PReNet release): the recursive block without the LSTM", "trunc",
              1500.0, config="prn_r_config_from_dict", weights="load_prenet_weights"),
    )},
    "nlcl": ModelSpec(
        name="nlcl",
        description=("NLCL (Ye et al., CVPR 2022), unsupervised non-local contrastive deraining of real rain; "
                     "loads the official latest_net_Back.pth (+ _Rain.pth beside it for --layers)"),
        config_from_dict=lazy("derainkit.models.nlcl", "NLCLConfig.from_dict"),
        build=lazy("derainkit.models.nlcl", "NLCLDerain"),
        load_weights=lazy("derainkit.models.nlcl", "load_nlcl_weights"),
        official_quantize="trunc",  # official util.tensor2im: uint8 of the clamped, rescaled output
        infer_bytes_per_pixel=1000.0,  # 547 B/px measured at 1 MP on CPU (full frame), plus headroom
        task="nlcl",
        whole_frame_norm=True,
        # official options: Adam 2e-4, beta1 0.5, batch 1, 256 crops, 200 + 10 epochs (reference note §4)
        recipe={"lr": 2e-4, "betas": [0.5, 0.999], "batch": 1, "crop": 256, "epochs": 210, "exemplar": "none"},
    ),
    "unirain": ModelSpec(
        name="unirain",
        description=("UniRain (Yang et al., CVPR 2026), asymmetric soft/hard MoE U-Net for four rain types; "
                     "our reconstruction (the release has no model code)"),
        config_from_dict=lazy("derainkit.models.unirain", "UniRainConfig.from_dict"),
        build=lazy("derainkit.models.unirain", "UniRain"),
        load_weights=lazy("derainkit.models.unirain", "load_unirain_weights"),
        official_quantize="round",  # the released test.py scores clamped floats
        infer_bytes_per_pixel=9000.0,  # base preset ~8.6 kB/px measured at 384x384 on CPU
        task="unirain",
        # AdamW 2e-4 (torch's default weight decay 0.01) and crop 128 from the released train.py; batch 8
        # and 300k iterations from the paper's summaries (reference note §4.1)
        recipe={"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "loss": "l1", "crop": 128, "batch": 8,
                "iterations": 300000, "exemplar": "none"},
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None


def build_model(name: str | None = None, config: Mapping[str, Any] | None = None,
                weights: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Build a registered model in eval mode on ``device``, with ``weights`` if given (else the shipped ones).

    ``name`` may be omitted when ``weights`` is a kit ``.safetensors`` export, which names its model; its
    stored config is used when ``config`` is None. A file exported for another model is refused.
    """
    path = Path(weights) if weights is not None else None
    meta = exported_metadata(path) if path is not None else {}
    if name is None:
        if "model" not in meta:
            raise ConfigError("build_model needs a model name, or a kit .safetensors file that records one"
                              + (f" ({path} does not)" if path is not None else ""))
        name = meta["model"]
    spec = get_model_spec(name)
    if meta.get("model") not in (None, name):
        raise CheckpointError(f"{path}: holds weights of model {meta['model']!r}, not {name!r}")
    if path is None:
        path = spec.default_weights
        meta = exported_metadata(path) if path is not None else {}
    if config is None:
        config = meta.get("model_config")
    model = spec.build(spec.config_from_dict(config))
    if path is not None:
        spec.load_weights(model, path)
        _check_finite(model, path)
    return model.to(device).eval()


def _check_finite(model: nn.Module, path: Path) -> None:
    """Weights with NaN/inf make black or garbage images that would then be scored: refuse them."""
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weights contain NaN/inf values (first in {key!r}); the file is damaged "
                                  "or the training run that wrote it diverged")


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model, metadata) of a kit ``.safetensors`` export: the network it names, with its weights."""
    meta = exported_metadata(Path(path))
    if "model" not in meta:
        raise CheckpointError(f"{path}: no model name in its metadata; load it with the model's own loader")
    return build_model(meta["model"], meta.get("model_config") or {}, path, device), meta


def exported_metadata(path: Path | None) -> dict:
    """The kit metadata of a ``.safetensors`` export ({} for other files and for None)."""
    if path is None or Path(path).suffix != ".safetensors":
        return {}
    return read_metadata(path)


__all__ = ["MODELS", "ModelSpec", "build_model", "exported_metadata", "get_model_spec", "load_exported"]
