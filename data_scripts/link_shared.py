#!/usr/bin/env python3
"""Set up the kit's data root from a local ``shared/data`` folder (no download).

    python data_scripts/link_shared.py                  # ../shared/data -> $DERAINKIT_DATA or ~/.cache/derainkit/data
    python data_scripts/link_shared.py --verify         # also check every file against shared/SHA256SUMS
    python data_scripts/link_shared.py --dest data --copy

Each top-level folder of ``shared/data`` (rain100l, nlcl_realrain, ...) becomes a symbolic link (or,
with --copy, a copy) of the same name in the data root, the same place ``fetch.py`` downloads to.
The data sets the registry knows (rain100l/test, rain100l/train, nlcl_realrain/rainy) are then
checked with ``discover_pairs``: layout and pair count.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from derainkit.data.manifest import file_sha256
from derainkit.data.paths import data_root
from derainkit.errors import DatasetError

if __package__:
    from .fetch import load_registry, validate
else:  # run as a script: this folder is sys.path[0]
    from fetch import load_registry, validate

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parent.parent / "shared"


def verify_checksums(shared: Path, log=print) -> int:
    """Check shared/data files against shared/SHA256SUMS; returns the number checked, raises on a mismatch."""
    sums = shared / "SHA256SUMS"
    if not sums.is_file():
        raise DatasetError(f"{sums}: not found, cannot verify")
    bad, checked = [], 0
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        rel = name.strip().lstrip("*").removeprefix("./")
        if not rel.startswith("data/"):
            continue
        path = shared / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif file_sha256(path) != digest:
            bad.append(f"{rel} (sha256 differs)")
        checked += 1
    if bad:
        raise DatasetError(f"{shared}: {len(bad)} of {checked} data files fail SHA256SUMS: " + ", ".join(bad[:10])
                           + (" ..." if len(bad) > 10 else ""))
    log(f"{checked} data files match {sums}")
    return checked


def link_shared(shared: Path, dest: Path, copy: bool = False, force: bool = False, log=print) -> list[Path]:
    """Link (or copy) every folder of shared/data into dest; returns the created paths."""
    src_root = shared / "data"
    if not src_root.is_dir():
        raise DatasetError(f"{src_root}: no shared data folder here (pass --shared PATH)")
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for src in sorted(p for p in src_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        target = dest / src.name
        if target.is_symlink():
            if Path(os.readlink(target)) == src.resolve() and not copy:
                log(f"{target} -> {src.resolve()} (already linked)")
                made.append(target)
                continue
            if not force:
                raise DatasetError(f"{target}: already links to {os.readlink(target)}; pass --force to replace it")
            target.unlink()
        elif target.exists():
            if not force:
                raise DatasetError(f"{target}: already exists (not a link); move it away or pass --force")
            shutil.rmtree(target)
        if copy:
            shutil.copytree(src, target)
            log(f"{target}: copied from {src}")
        else:
            target.symlink_to(src.resolve(), target_is_directory=True)
            log(f"{target} -> {src.resolve()}")
        made.append(target)
    return made


def check_known(dest: Path, log=print) -> list[str]:
    """Validate the registry's data sets found under dest; returns their names."""
    found = []
    for ds in load_registry().values():
        folder = dest / ds.dest
        if folder.exists():
            log(f"{ds.name}: {validate(ds, folder)} at {folder}")
            found.append(ds.name)
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help=f"default: {DEFAULT_SHARED}")
    parser.add_argument("--dest", type=Path, default=None, help="data root (default: $DERAINKIT_DATA or "
                                                                "~/.cache/derainkit/data)")
    parser.add_argument("--copy", action="store_true", help="copy instead of linking")
    parser.add_argument("--force", action="store_true", help="replace existing entries of the same name")
    parser.add_argument("--verify", action="store_true", help="check the files against shared/SHA256SUMS first")
    args = parser.parse_args(argv)
    dest = args.dest if args.dest is not None else data_root()
    try:
        if args.verify:
            verify_checksums(args.shared)
        link_shared(args.shared, dest, copy=args.copy, force=args.force)
        check_known(dest)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
