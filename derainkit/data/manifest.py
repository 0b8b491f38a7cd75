"""Data manifests: which files a result was computed on, with sizes and checksums.

A manifest is a CSV with one row per pair:

    id, rainy, clean, clean_side, height, width, rainy_sha256, clean_sha256

Paths are written relative to the pair's data root (the folder given to `discover_pairs`) when the
file lies inside it, so the same data on two machines gives the same manifest. `height` and `width`
are the pair's image size (one half's, for side-by-side files). Unpaired rows leave the clean
columns empty. The manifest's digest, the sha256 of its exact CSV bytes, keys results: the same
digest means the same files, byte for byte, under the same names.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Sequence, Union

from derainkit.data.layouts import Pair, image_size
from derainkit.errors import DatasetError
from derainkit.fsutil import atomic_write_text

PathLike = Union[str, os.PathLike]

COLUMNS = ("id", "rainy", "clean", "clean_side", "height", "width", "rainy_sha256", "clean_sha256")


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _portable(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def manifest_rows(pairs: Sequence[Pair]) -> list[dict[str, str]]:
    """One dict per pair with the manifest's columns (all values as strings)."""
    if not pairs:
        raise DatasetError("cannot write a manifest of an empty list of pairs")
    rows = []
    digests: dict[Path, str] = {}  # a clean image shared by several pairs (Rain1400) is hashed once

    def digest(p: Path) -> str:
        if p not in digests:
            if not p.is_file():
                raise DatasetError(f"{p}: file listed in the data set no longer exists")
            digests[p] = file_sha256(p)
        return digests[p]

    for pair in pairs:
        h, w = image_size(pair.rainy)
        if pair.is_side_by_side:
            w //= 2
        rows.append({
            "id": pair.id,
            "rainy": _portable(pair.rainy, pair.root),
            "clean": _portable(pair.clean, pair.root) if pair.clean is not None else "",
            "clean_side": pair.clean_side or "",
            "height": str(h),
            "width": str(w),
            "rainy_sha256": digest(pair.rainy),
            "clean_sha256": digest(pair.clean) if pair.clean is not None else "",
        })
    return rows


def _csv_text(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def manifest_text(pairs: Sequence[Pair]) -> str:
    """The manifest CSV as text (what `write_manifest` writes)."""
    return _csv_text(manifest_rows(pairs))


def manifest_digest(pairs: Sequence[Pair]) -> str:
    """sha256 (hex) of the manifest's CSV bytes: a key for results computed on these pairs."""
    return hashlib.sha256(manifest_text(pairs).encode("utf-8")).hexdigest()


def write_manifest(pairs: Sequence[Pair], path: PathLike) -> str:
    """Write the manifest CSV (atomically: temp file, then rename) and return its digest."""
    text = manifest_text(pairs)
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: PathLike) -> list[dict[str, str]]:
    """Rows of a manifest CSV; raises DatasetError naming the file when its columns are not the manifest's."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DatasetError(f"{path}: not a derainkit manifest (columns {reader.fieldnames}, expected {list(COLUMNS)})")
        return list(reader)
