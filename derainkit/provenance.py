"""Provenance recorded with every result: which code, which machine, which libraries."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parent.parent


def git_commit(short: bool = True) -> str:
    """The kit's git commit, with ``-dirty`` when tracked code differs (results/ aside); ``unknown`` outside a checkout."""
    try:
        args = ["git", "rev-parse", "--short" if short else "--verify", "HEAD"]
        commit = subprocess.run(args, capture_output=True, text=True, check=True, cwd=_REPO).stdout.strip()
        # results/ is output, not code: writing a result must not mark the code that made it dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               capture_output=True, text=True, cwd=_REPO).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def library_versions() -> dict[str, str]:
    import numpy
    import skimage

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-image": skimage.__version__}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    return {"commit": git_commit(), "device": device_name(device), "host": platform.node(),
            "versions": library_versions(), "time": now_iso()}
