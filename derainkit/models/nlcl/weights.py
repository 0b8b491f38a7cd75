"""Loading NLCL weights: the official checkpoints and the official fixture's dict of state_dicts.

Official formats (reference note §3.1, fixture README):

* ``latest_net_Back.pth`` / ``latest_net_Rain.pth``: zip torch files, each a plain state_dict of one
  generator with 72 keys (``gen.0.*``, ``gen.{1..16}.model.{0,1}.conv.*``, ``gen.17.conv.{0,3}.*``,
  ``gen.18.*``); they load into ``NLCLGenerator`` with strict key matching;
* ``nets_state_dict.pt`` (fixtures): ``{netRain, netBack, netD, netGenSample, netAdvBackSample,
  netAdvRainSample: state_dict}`` with the official key names; the Adv samplers' ``mlp_4`` is omitted
  there, and is dropped here when a file has it (its output never reaches a loss, quirk Q1).

Kit files: a ``.safetensors`` or ``.pth`` state_dict of ``NLCLDerain`` (keys ``background.gen.*`` and
optionally ``rain.gen.*``), or a kit training checkpoint holding such a dict under ``"model"``.

Every problem is one ``CheckpointError`` line naming the file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from derainkit.errors import CheckpointError

OFFICIAL_NET_NAMES = ("netRain", "netBack", "netD", "netGenSample", "netAdvBackSample", "netAdvRainSample")


def read_state_file(path: str | Path, map_location: str | torch.device = "cpu") -> Mapping[str, Any]:
    """A mapping read from a .pth/.pt (tensors only, ``weights_only=True``) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(map_location))
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot be read as a weights file ({type(exc).__name__}: {first})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict, found {type(state).__name__}")
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with a one-line CheckpointError naming ``source``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: not {what} state_dict: missing keys {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}"
                              f"{'...' if len(unexpected) > 4 else ''}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[key].shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: {key} has shape {shape}, {what} needs {tuple(own[key].shape)} "
                                  f"(a different config?)")
    module.load_state_dict(state, strict=True)
    return module


def load_generator_file(generator: nn.Module, path: str | Path) -> nn.Module:
    """An official ``latest_net_{Back,Rain}.pth`` (or any plain generator state_dict) into a generator."""
    state = read_state_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return load_strict(generator, state, str(path), "an NLCL generator")


def _sibling_rain_file(path: Path) -> Path | None:
    """``latest_net_Rain.pth`` beside ``latest_net_Back.pth`` (any prefix before ``_Back``)."""
    m = re.fullmatch(r"(.*)_Back(\.[A-Za-z]+)", path.name)
    if m is None:
        return None
    rain = path.with_name(f"{m.group(1)}_Rain{m.group(2)}")
    return rain if rain.is_file() else None


def load_nlcl_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Weights into an ``NLCLDerain``: official ``*_Back.pth`` (plus the ``*_Rain.pth`` beside it, if any,
    for the rain layer) or a kit state_dict/checkpoint holding ``background.*`` (and ``rain.*``)."""
    path = Path(path)
    if re.fullmatch(r".*_Rain\.[A-Za-z]+", path.name):
        raise CheckpointError(f"{path}: is NLCL's rain generator; pass the background generator "
                              f"({path.name.replace('_Rain', '_Back')}) as the weights")
    state = read_state_file(path)
    if isinstance(state.get("model"), Mapping):
        state = state["model"]  # a kit training checkpoint
    if any(k.startswith("background.") for k in state):
        back = {k.removeprefix("background."): v for k, v in state.items() if k.startswith("background.")}
        rain = {k.removeprefix("rain."): v for k, v in state.items() if k.startswith("rain.")}
        other = sorted(k for k in state if not k.startswith(("background.", "rain.")))
        if other:
            raise CheckpointError(f"{path}: not an NLCL checkpoint: unexpected keys {other[:4]}")
        load_strict(model.background, back, str(path), "an NLCL background generator")
        if rain:
            load_strict(model.rain, rain, str(path), "an NLCL rain generator")
        model.rain_loaded = bool(rain)
        return model
    load_strict(model.background, {k.removeprefix("module."): v for k, v in state.items()}, str(path),
                "an NLCL generator")
    rain_path = _sibling_rain_file(path)
    if rain_path is not None:
        load_generator_file(model.rain, rain_path)
    model.rain_loaded = rain_path is not None
    return model


def load_official_nets(nets: nn.Module, states: Mapping[str, Mapping[str, torch.Tensor]] | str | Path) -> nn.Module:
    """The official dict of state_dicts (``nets_state_dict.pt`` layout) into an ``NLCLNets``.

    Strict per network, except that the Adv samplers' MLPs beyond the heads the config has (the
    official ``mlp_4`` on D layer 11, whose output the official loss discards) are dropped.
    """
    source = str(states) if isinstance(states, (str, Path)) else "official NLCL state_dicts"
    if isinstance(states, (str, Path)):
        states = read_state_file(states)
    missing = [n for n in OFFICIAL_NET_NAMES if n not in states]
    if missing:
        raise CheckpointError(f"{source}: missing networks {missing}; expected {list(OFFICIAL_NET_NAMES)}")
    for name in OFFICIAL_NET_NAMES:
        module = nets.official_module(name)
        state = {k.removeprefix("module."): v for k, v in states[name].items()}
        if name.startswith("netAdv"):
            state = {k: v for k, v in state.items()
                     if not (m := re.match(r"mlp_(\d+)\.", k)) or int(m.group(1)) < len(module)}
        load_strict(module, state, f"{source} [{name}]", f"an NLCL {name}")
    return nets
