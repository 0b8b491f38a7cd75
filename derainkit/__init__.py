"""derainkit: a reproducibility kit for single-image deraining built on non-local self-similarity."""
from __future__ import annotations

__version__ = "0.1.0"

from derainkit.errors import (  # noqa: F401  (re-exported)
    CheckpointError,
    ConfigError,
    DatasetError,
    DerainkitError,
    ImageReadError,
)
