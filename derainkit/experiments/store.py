"""The results store: one JSON record per experiment, named by the hash of what defines it.

    store = Store("results/cpu/runs")
    rec = store.ensure({"kind": "train_eval", ...}, compute)   # computes only when no record exists

A record is written once, atomically (temp file + rename), after the computation finished, so a
crash leaves no half record and the next call simply computes again. Records accumulate: a notebook
run on a lent GPU today and again tomorrow reuses everything already stored. ``force=True``
recomputes and replaces the record.

The key covers only what changes the numbers (configs, data content digests, protocols); it does
not cover the commit or the machine, which are recorded as provenance inside the record.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from derainkit.errors import DerainkitError
from derainkit.fsutil import atomic_write_text

RECORD_VERSION = 1


def spec_key(spec: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of ``spec``."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Store:
    """Records under ``root``: ``<key>.json`` plus an optional ``<key>/`` folder of artefacts."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def record_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def artefact_dir(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.record_path(key)
        if not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DerainkitError(f"{path}: corrupt results record ({exc}); delete it to recompute") from None
        if not isinstance(rec, dict) or "key" not in rec or rec.get("version") != RECORD_VERSION:
            raise DerainkitError(f"{path}: not a results record of version {RECORD_VERSION}; delete it to recompute")
        return rec

    def put(self, key: str, spec: Mapping[str, Any], result: Mapping[str, Any], wall_s: float) -> dict[str, Any]:
        clash = sorted(set(result) & {"version", "key", "spec", "wall_seconds"})
        if clash:  # a computation's own "version" would overwrite the record format's
            raise DerainkitError(f"results record {key}: the result uses reserved keys {clash}")
        rec = {"version": RECORD_VERSION, "key": key, "spec": dict(spec), **dict(result),
               "wall_seconds": round(float(wall_s), 3)}
        atomic_write_text(self.record_path(key), json.dumps(rec, indent=1, sort_keys=True, default=str) + "\n",
                          durable=True)
        return rec

    def ensure(self, spec: Mapping[str, Any], compute: Callable[[str], Mapping[str, Any]],
               force: bool = False) -> dict[str, Any]:
        """The stored record of ``spec``; when there is none (or ``force``), ``compute(key)`` makes the
        result dict (metrics, provenance, ...), which is recorded with the spec and the wall time."""
        key = spec_key(spec)
        if not force:
            rec = self.get(key)
            if rec is not None:
                return rec
        t0 = time.perf_counter()
        result = compute(key)
        return self.put(key, spec, result, time.perf_counter() - t0)

    def records(self) -> list[dict[str, Any]]:
        """Every record in the store, sorted by key."""
        if not self.root.is_dir():
            return []
        return [r for r in (self.get(p.stem) for p in sorted(self.root.glob("*.json"))) if r is not None]
