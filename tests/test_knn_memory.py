"""Machine/device memory (derainkit.sysmem), the one source used by the kNN budget and tiled inference."""
from __future__ import annotations

import torch

from derainkit import sysmem
from derainkit.knn import default_memory_budget
from derainkit.knn import search


def test_meminfo_is_parsed(tmp_path, monkeypatch):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16384000 kB\nMemFree:         100 kB\nMemAvailable:    8192000 kB\n")
    monkeypatch.setattr(sysmem, "MEMINFO", str(f))
    assert sysmem.available_memory("cpu") == 8192000 * 1024
    assert sysmem.total_memory() == 16384000 * 1024


def test_unreadable_meminfo_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sysmem, "MEMINFO", str(tmp_path / "missing"))
    avail, total = sysmem.available_memory("cpu"), sysmem.total_memory("cpu")
    assert isinstance(avail, int) and avail > 0 and isinstance(total, int) and total > 0


def test_real_machine_figures_are_consistent():
    assert 0 < sysmem.available_memory() <= sysmem.total_memory()


def test_tiling_reads_the_same_source():
    from derainkit.infer import tiling

    assert tiling.available_memory is sysmem.available_memory


def test_knn_budget_is_clamped(monkeypatch):
    monkeypatch.setattr(search.sysmem, "available_memory", lambda device: 1 << 20)
    assert default_memory_budget("cpu") == 16 << 20  # floor
    monkeypatch.setattr(search.sysmem, "available_memory", lambda device: 1 << 40)
    assert default_memory_budget("cpu") == 256 << 20  # cap
    monkeypatch.setattr(search.sysmem, "available_memory", lambda device: 800 << 20)
    assert default_memory_budget(torch.device("cpu")) == 100 << 20  # an eighth in between
