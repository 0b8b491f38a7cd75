"""Claims: who is computing a record (or training a run folder) right now, safe for many workers.

A claim is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on a local disk and on NFSv3+),
holding the owner's id, host and pid. While the owner works, a daemon thread touches the file every
``heartbeat`` seconds; a claim whose file has not been touched for ``stale_after`` seconds belongs to
a worker that died (killed, node lost, job timed out) and may be taken over. Takeover renames the
stale file away first: of two workers that both see it stale, only one rename succeeds, so only one
of them goes on to create the new claim.

    with Claim.acquire(path) as claim:        # None: someone else holds it
        ...                                   # heartbeat runs in the background

``publish_once`` writes a file that must exist exactly once (a finished record): the content goes to
a temporary file that is then hard-linked onto the final name, which fails if another worker got
there first (the first one wins, the late one's copy is dropped).

Timing comes from ``$DERAINKIT_CLAIM_HEARTBEAT_S`` (default 30) and ``$DERAINKIT_CLAIM_STALE_S``
(default 600): on a shared filesystem with clock skew between hosts, keep the second well above the
first.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from derainkit.fsutil import _exclusive_temp, check_target, fsync_dir

_HEARTBEAT_ENV, _STALE_ENV = "DERAINKIT_CLAIM_HEARTBEAT_S", "DERAINKIT_CLAIM_STALE_S"


def heartbeat_seconds() -> float:
    return float(os.environ.get(_HEARTBEAT_ENV) or 30)


def stale_seconds() -> float:
    return float(os.environ.get(_STALE_ENV) or 600)


def read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's content and age (seconds since its last heartbeat), or None when there is none."""
    try:
        age = time.time() - path.stat().st_mtime
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or garbage: judged by its age only
        info = {}
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
    return {**(info if isinstance(info, dict) else {}), "age_s": age}


class Claim:
    """A held claim; release it (or leave the ``with`` block) when the work is done."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self.lost = False  # set when another worker took the claim over (our heartbeat was too late)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim {path.name}", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, path: str | Path, stale_after: float | None = None) -> "Claim | None":
        """Create the claim, taking over a stale one; None while a live worker holds it."""
        path = check_target(Path(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        stale_after = stale_seconds() if stale_after is None else stale_after
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        body = json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except FileExistsError:
                held = read_claim(path)
                if held is not None and held["age_s"] < stale_after:
                    return None
                try:  # stale: move it aside; only one of several takers wins this rename
                    os.rename(path, path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            return cls(path, owner)
        return None

    def _beat(self) -> None:
        interval = heartbeat_seconds()
        while not self._stop.wait(interval):
            held = read_claim(self.path)
            if held is None or held.get("owner") not in (None, self.owner):
                self.lost = True
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        held = read_claim(self.path)
        if held is not None and held.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)
        for old in self.path.parent.glob(f"{self.path.name}.stale-*"):
            old.unlink(missing_ok=True)  # the dead owners' claims we moved aside

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def publish_once(path: str | Path, text: str) -> bool:
    """Write ``path`` only if it does not exist yet (atomically, durably); False when another worker's
    copy is already there (ours is discarded)."""
    path = check_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _exclusive_temp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)
