"""Shared helpers for the benchmarks: timing, peak memory, provenance and CSV output.

Benchmarks never assert speed; they write numbers (and ratios against baselines measured in the
same process on the same inputs) to results/bench/*.csv. Absolute times only mean something on
the device they name, so every row carries the device and the commit.
"""
from __future__ import annotations

import csv
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from derainkit.fsutil import atomic_path
from derainkit.provenance import device_name, git_commit  # noqa: F401  (re-exported for bench modules)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child(target: Callable[..., Any], args: tuple, queue: "mp.Queue") -> None:
    try:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prepared = target(*args, phase="prepare")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = target(*args, phase="run", prepared=prepared)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        queue.put({"ok": True, "result": result, "rss_peak_mb": after / 1024,
                   "rss_extra_mb": (after - before) / 1024, "rss_base_mb": base / 1024})
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def peak_rss_in_subprocess(target: Callable[..., Any], *args: Any, timeout: float = 1800) -> dict:
    """Run `target(*args, phase=...)` in a fresh process and report its peak resident memory.

    `target` is called twice in the child: with phase="prepare" (allocate inputs; not counted) and
    phase="run", prepared=<what prepare returned> (the measured work). `rss_extra_mb` is the growth
    of the process's peak RSS during the run phase, i.e. the extra memory the work needed.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    try:
        out = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if not out["ok"]:
        raise RuntimeError(out["error"])
    return out


def reset_peak_rss() -> None:
    """Return freed heap memory to the OS (glibc), then restart the kernel's peak-RSS mark (VmHWM), so a
    measured phase cannot hide its allocations in memory an earlier phase freed (Linux; no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is no procfs."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_extra_mb(out: dict) -> float:
    """Peak extra MB of a peak_rss_in_subprocess result: the run phase's own VmHWM − VmRSS measurement when
    the target returned one (ru_maxrss can keep a higher mark from start-up), else the harness's figure."""
    res = out.get("result")
    return float(res) if res is not None else float(out["rss_extra_mb"])


def loadavg() -> str:
    """The 1-minute load average, recorded beside timings taken on a possibly shared machine."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return ""


def write_csv(path: Path, rows: Iterable[dict]) -> Path:
    """Write rows (dicts) to CSV, adding commit, device-independent provenance columns."""
    rows = list(rows)
    commit = git_commit()
    fields: list[str] = []
    for row in rows:
        row.setdefault("commit", commit)
        row.setdefault("torch", torch.__version__)
        row.setdefault("host", platform.node())
        for key in row:
            if key not in fields:
                fields.append(key)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
