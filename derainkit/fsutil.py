"""Safe file writes: every file the kit writes appears whole or not at all, never through a link.

Writers fill a temporary file beside the target and rename it into place (``os.replace`` is atomic
on one filesystem), so a crash, a full disk or Ctrl-C never leaves a truncated image, record or
checkpoint behind, and never clobbers the previous version. The temporary file is created
exclusively (it cannot be a link someone planted), and a target that is a symbolic link is refused:
the kit never writes through a link it did not create, so a link in an output folder cannot make it
overwrite a file elsewhere. ``locked_update`` serialises read-modify-write of a shared file (a log
several runs append to) with an advisory lock.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

from derainkit.errors import DerainkitError

PathLike = Union[str, os.PathLike]


class UnsafeWriteError(DerainkitError):
    """A write the kit refuses: through a symbolic link, or over one of the inputs."""


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported (e.g. Windows): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_target(path: PathLike) -> Path:
    """``path`` if the kit may write it: refused (UnsafeWriteError) when it is a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafeWriteError(f"{path}: is a symbolic link (to {os.readlink(path)}); the kit does not write "
                               "through links it did not create: remove the link or choose another output")
    return path


def _exclusive_temp(path: Path) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a new temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    On any exception the temporary file is removed and the old ``path`` (if any) is untouched.
    ``durable`` also fsyncs the file and the folder, for files that must survive a power loss
    (checkpoints), at the cost of a disk flush. A ``path`` that is a symbolic link is refused.
    """
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _exclusive_temp(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        check_target(path)  # still not a link (one may have appeared while we wrote)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes, durable: bool = False) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def locked_update(path: PathLike, update: Callable[[str | None], str]) -> Path:
    """Replace ``path`` by ``update(old text or None)`` atomically, holding an exclusive lock on a
    sidecar ``.<name>.lock`` so that concurrent updaters (two runs appending to one log) take turns
    and none loses the other's entry."""
    import fcntl

    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = check_target(path.with_name(f".{path.name}.lock"))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        return atomic_write_text(path, update(old))
    finally:
        os.close(fd)  # releases the lock


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (or folder), links and ``..`` resolved; False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting(outputs: Iterable[tuple[PathLike, PathLike]], inputs: Iterable[PathLike]) -> None:
    """UnsafeWriteError when an output (given as ``(output, what it is made from)``) is one of ``inputs``
    (same path once links and ``..`` are resolved, or same inode: hard links count) or when two
    outputs are the same file."""
    inputs = [Path(p) for p in inputs]
    resolved = {p.resolve(): p for p in inputs}
    inodes = {}
    for p in inputs:
        st = os.stat(p)
        inodes[(st.st_dev, st.st_ino)] = p
    seen: dict[Path, Path] = {}
    for out, source in outputs:
        out, key = Path(out), Path(out).resolve()
        if key in seen:
            raise UnsafeWriteError(f"{seen[key]} and {source} would both be written to {out}; rename one of them")
        seen[key] = Path(source)
        hit = resolved.get(key)
        if hit is None and out.exists():
            st = os.stat(out)
            hit = inodes.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise UnsafeWriteError(f"{out}: is the input {hit}; the kit never writes over an input, choose another "
                                   "output")
