"""Where the kit keeps data it builds or downloads, overridable by environment variables."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The kit's cache folder: $DERAINKIT_CACHE, else ~/.cache/derainkit (not created here)."""
    env = os.environ.get("DERAINKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "derainkit"


def data_root() -> Path:
    """Where benchmark data sets live: $DERAINKIT_DATA, else <cache_dir>/data.

    `data_scripts/fetch.py` downloads into it and `data_scripts/link_shared.py` links ../shared/data
    into it, one folder per data set and split (e.g. rain100l/test), each in a layout
    `derainkit.data.discover_pairs` reads.
    """
    env = os.environ.get("DERAINKIT_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"
