"""MSGNN (Wang et al., IJCAI-24): multi-scale graph network with exemplars, code and paper variants.

Entry points: :class:`MSGNNConfig`, :class:`MSGNN`, :func:`build_msgnn`, :func:`load_official_state_dict`,
:func:`count_parameters`, :func:`pyr_down`. See ``config.py`` for every code/paper difference.
"""
from __future__ import annotations

from derainkit.models.msgnn.config import MSGNNConfig
from derainkit.models.msgnn.keymap import (
    export_official_state_dict,
    load_official_state_dict,
    official_to_ours,
    ours_to_official,
)
from derainkit.models.msgnn.model import MSGNN, build_msgnn, count_parameters
from derainkit.models.msgnn.pyramid import pyr_down, pyramid

__all__ = [
    "MSGNNConfig",
    "MSGNN",
    "build_msgnn",
    "count_parameters",
    "load_official_state_dict",
    "export_official_state_dict",
    "official_to_ours",
    "ours_to_official",
    "pyr_down",
    "pyramid",
]
