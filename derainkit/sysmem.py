"""Memory of the machine and of a CUDA device: one place that reads `/proc/meminfo` and `mem_get_info`.

Used by the kNN engine (the size of its distance blocks) and by tiled inference (whole image or tiles).
On the CPU the figures come from `/proc/meminfo` (Linux), then from `os.sysconf` where that exists, then
a conservative fixed guess, so a caller always gets a number; on CUDA from `torch.cuda.mem_get_info`.
"""
from __future__ import annotations

import os

import torch

__all__ = ["available_memory", "total_memory"]

MEMINFO = "/proc/meminfo"
# Used only when neither /proc/meminfo nor sysconf answers (not Linux, unusual sandboxes): callers size
# buffers from it, so a modest figure errs on the side of smaller blocks or tiles.
FALLBACK_BYTES = 4 << 30


def _meminfo_bytes(key: str) -> int | None:
    """The `key:` line of /proc/meminfo in bytes (the file reports kB), or None if it cannot be read."""
    try:
        with open(MEMINFO) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_bytes(pages_name: str) -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages_name))
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes the process can use now: free memory of a CUDA device, or the machine's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    for value in (_meminfo_bytes("MemAvailable"), _sysconf_bytes("SC_AVPHYS_PAGES")):
        if value is not None:
            return value
    return FALLBACK_BYTES


def total_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of memory in all: a CUDA device's total memory, or the machine's MemTotal."""
    device = torch.device(device)
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return int(total)
    for value in (_meminfo_bytes("MemTotal"), _sysconf_bytes("SC_PHYS_PAGES")):
        if value is not None:
            return value
    return FALLBACK_BYTES
