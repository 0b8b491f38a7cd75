"""MSGNN (Wang et al., IJCAI-24): multi-scale graph network with exemplars, code and paper variants.

Entry points: :class:`MSGNNConfig`, :class:`MSGNN`, :func:`build_msgnn`, :func:`load_official_state_dict`,
:func:`count_parameters`, :func:`pyr_down`. See ``config.py`` for every code/paper difference.

Names are imported on first use (PEP 562), so ``derainkit.models.msgnn.config`` can be read (to validate
a run config) without loading the network and the kNN engine.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MSGNNConfig": "config",
    "export_official_state_dict": "keymap", "load_official_state_dict": "keymap",
    "official_to_ours": "keymap", "ours_to_official": "keymap",
    "MSGNN": "model", "build_msgnn": "model", "count_parameters": "model",
}
# Eager: the function `pyramid` shares its name with its submodule, which would otherwise shadow it.
from derainkit.models.msgnn.pyramid import pyr_down, pyramid  # noqa: E402

__all__ = sorted(_WHERE) + ["pyr_down", "pyramid"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
