"""The results store: one JSON record per experiment, named by the hash of what defines it.

    store = Store("results/cpu/runs")
    rec = store.ensure({"kind": "train_eval", ...}, compute)   # computes only when no record exists

A record is written once, atomically, after the computation finished, so a crash leaves no half
record and the next call simply computes again. Records accumulate: a notebook run on a lent GPU
today and again tomorrow reuses everything already stored. ``force=True`` recomputes and replaces
the record.

The key covers only what changes the numbers (configs, data content digests, protocols); it does
not cover the commit or the machine, which are recorded as provenance inside the record.

**Many workers, one store.** Before computing, a worker claims the key (``<key>.claim``, see
:mod:`derainkit.experiments.claims`); a second worker that needs the same record waits for it (or, in
``fill`` mode, skips it and goes on with other records), a claim whose heartbeat stopped is taken
over, and the finished record is published exactly once. What ``ensure`` does with a missing record
depends on ``$DERAINKIT_STORE_MODE`` (set by :mod:`derainkit.experiments.fill` for the kernels it
starts):

* ``run`` (default): compute it (waiting while another worker holds its claim);
* ``plan``: compute nothing; note it and hand back a placeholder (``{"planned": True, ...}``) so the
  notebook goes on and names every other record it needs;
* ``fill``: compute it if it is in ``$DERAINKIT_STORE_ONLY`` (all when unset) and no live worker holds
  it; otherwise a placeholder.

Every reuse, computation and placeholder is appended to ``$DERAINKIT_STORE_LOG`` (JSON lines) when set:
that is how ``make reproduce-tables`` counts reused and computed records, and how ``plan`` lists them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from derainkit.errors import DerainkitError
from derainkit.fsutil import atomic_write_text

RECORD_VERSION = 1
MODES = ("run", "plan", "fill")
_MODE_ENV, _ONLY_ENV, _LOG_ENV = "DERAINKIT_STORE_MODE", "DERAINKIT_STORE_ONLY", "DERAINKIT_STORE_LOG"
_RESERVED = {"version", "key", "spec", "wall_seconds", "planned"}


def spec_key(spec: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of ``spec``."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def store_mode() -> str:
    mode = os.environ.get(_MODE_ENV) or "run"
    if mode not in MODES:
        raise DerainkitError(f"${_MODE_ENV}={mode!r}: choose from {list(MODES)}")
    return mode


def writes_outputs() -> bool:
    """Whether tables and figures are written (not while a plan or a fill worker walks a notebook)."""
    return store_mode() == "run"


def is_planned(record: Mapping[str, Any] | None) -> bool:
    return bool(record) and bool(record.get("planned"))


def log_event(event: str, key: str, spec: Mapping[str, Any], **extra: Any) -> None:
    """One JSON line in $DERAINKIT_STORE_LOG (O_APPEND: lines of concurrent writers do not interleave)."""
    path = os.environ.get(_LOG_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "key": key, "kind": spec.get("kind"), "spec": dict(spec),
                       "pid": os.getpid(), **extra}, sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Store:
    """Records under ``root``: ``<key>.json`` plus an optional ``<key>/`` folder of artefacts."""

    poll_seconds = 5.0  # how often a worker waiting for another's record looks again

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def record_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def claim_path(self, key: str) -> Path:
        return self.root / f"{key}.claim"

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

    def put(self, key: str, spec: Mapping[str, Any], result: Mapping[str, Any], wall_s: float,
            replace: bool = True) -> dict[str, Any]:
        """Write the record; with ``replace=False`` only if none exists (then the stored one is returned)."""
        from derainkit.experiments.claims import publish_once

        clash = sorted(set(result) & _RESERVED)
        if clash:  # a computation's own "version" would overwrite the record format's
            raise DerainkitError(f"results record {key}: the result uses reserved keys {clash}")
        rec = {"version": RECORD_VERSION, "key": key, "spec": dict(spec), **dict(result),
               "wall_seconds": round(float(wall_s), 3)}
        text = json.dumps(rec, indent=1, sort_keys=True, default=str) + "\n"
        if replace:
            atomic_write_text(self.record_path(key), text, durable=True)
        elif not publish_once(self.record_path(key), text):
            return self.get(key) or rec  # another worker published it first: theirs is the record
        return rec

    def ensure(self, spec: Mapping[str, Any], compute: Callable[[str], Mapping[str, Any]],
               force: bool = False, after: Iterable[Mapping[str, Any] | None] = ()) -> dict[str, Any]:
        """The stored record of ``spec``; when there is none (or ``force``), ``compute(key)`` makes the
        result dict (metrics, provenance, ...), which is recorded with the spec and the wall time.
        ``after``: records the computation reads; while one of them is a placeholder, so is this one."""
        from derainkit.experiments.claims import Claim

        key = spec_key(spec)
        spec = dict(spec)
        if not force:
            rec = self.get(key)
            if rec is not None:
                log_event("reused", key, spec)
                return rec
        mode = store_mode()
        blockers = [r["key"] for r in after if is_planned(r)]
        if blockers:
            log_event("blocked", key, spec, after=blockers)
            return self.placeholder(key, spec)
        if mode == "plan" or (mode == "fill" and not self._wanted(key)):
            log_event("planned", key, spec)
            return self.placeholder(key, spec)
        while True:
            claim = Claim.acquire(self.claim_path(key))
            if claim is not None:
                break
            if mode == "fill":  # another live worker computes it: go on with other records
                log_event("claimed", key, spec)
                return self.placeholder(key, spec)
            time.sleep(self.poll_seconds)  # run mode: this notebook needs it, so wait for it
            rec = self.get(key)
            if rec is not None and not force:
                log_event("reused", key, spec, waited=True)
                return rec
        with claim:
            rec = None if force else self.get(key)  # finished by another worker just before we claimed it
            if rec is not None:
                log_event("reused", key, spec)
                return rec
            t0 = time.perf_counter()
            result = compute(key)
            rec = self.put(key, spec, result, time.perf_counter() - t0, replace=force)
        log_event("computed", key, spec, wall_seconds=rec.get("wall_seconds"))
        return rec

    def placeholder(self, key: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """What a notebook gets for a record that is not computed in this walk: tables show it as not run."""
        return {"key": key, "spec": dict(spec), "planned": True, "metrics": {}, "provenance": {}}

    @staticmethod
    def _wanted(key: str) -> bool:
        only = os.environ.get(_ONLY_ENV)
        return not only or key in only.split(",")

    def records(self) -> list[dict[str, Any]]:
        """Every record in the store, sorted by key."""
        if not self.root.is_dir():
            return []
        return [r for r in (self.get(p.stem) for p in sorted(self.root.glob("*.json"))) if r is not None]
