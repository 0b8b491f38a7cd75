#!/usr/bin/env python3
"""Download public deraining benchmarks, verify their checksums, and lay them out for derainkit.

    python data_scripts/fetch.py --list
    python data_scripts/fetch.py rain100l-test raintrainl --mirror https://my.lab/derain-mirror
    python data_scripts/fetch.py rain12 --allow-unverified          # no checksum recorded yet

Each data set in the registry (``data_scripts/sources.json``) lists its files: a name, the original
URL (null where the authors host it on Baidu/Google Drive/OneDrive, which plain HTTP cannot fetch),
a sha256 (null where nobody has recorded one), an archive type, and how the extracted files map
onto one of the layouts `derainkit.data.discover_pairs` reads. For each requested data set:

1. every file is downloaded (only the standard library's urllib) into ``<dest>/.downloads/<set>/``,
   through a ``.part`` file that a rerun resumes with an HTTP Range request, then checked against its
   sha256 and renamed into place. A file whose checksum does not match is deleted, never kept;
2. archives are extracted (zip, tar, tar.gz; member paths that would escape the folder are refused)
   into a staging folder beside the destination, and the registry's ``map`` moves the parts into place;
3. the result is checked with ``discover_pairs`` (its layout, and its pair count where known), then
   renamed to ``<dest>/<set's dest>`` in one step, so a half-fetched set never looks complete.

``--mirror URL`` replaces every file's host: the file is fetched from ``{URL}/{set}/{filename}``. A
mirror holding the same bytes verifies against the same checksums. Files with no recorded checksum
are refused unless ``--allow-unverified`` is given (the computed sha256 is then printed, ready to be
recorded). A file you downloaded by hand can be dropped at ``<dest>/.downloads/<set>/<filename>``:
it is used (and verified) instead of downloading.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Sequence, Union

from derainkit.data import discover_pairs
from derainkit.data.manifest import file_sha256
from derainkit.data.paths import data_root
from derainkit.errors import DatasetError

PathLike = Union[str, os.PathLike]
SOURCES = Path(__file__).resolve().with_name("sources.json")
ARCHIVE_TYPES = ("zip", "tar", "tar.gz", "tgz")
USER_AGENT = "derainkit-fetch/1 (+https://github.com; research data download)"
CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A download failed (network, HTTP status, truncated transfer)."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 is not the recorded one."""


# --------------------------------------------------------------------------------------------------
# registry

@dataclass(frozen=True)
class FileSource:
    filename: str  # name under the mirror's {set}/ folder and in the download cache; may hold "/"
    url: Optional[str]
    sha256: Optional[str]
    archive: Optional[str] = None  # None: a plain file, placed at `to` (default: filename)
    to: Optional[str] = None
    map: tuple = ()  # archives: ({"from": glob in the archive, "to": folder in the set}, ...)
    size: Optional[int] = None


@dataclass(frozen=True)
class Check:
    """What a fetched data set must look like: `discover_pairs(dest/path, layout)` finds `pairs` pairs."""

    path: str
    layout: str
    pairs: Optional[int]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    dest: str
    checks: tuple[Check, ...]
    files: tuple[FileSource, ...]
    title: str = ""
    official: tuple[str, ...] = ()
    notes: str = ""

    @property
    def verified(self) -> bool:
        return all(f.sha256 for f in self.files)

    @property
    def pairs(self) -> Optional[int]:
        counts = [c.pairs for c in self.checks]
        return None if any(n is None for n in counts) else sum(counts)


def load_registry(path: Optional[PathLike] = None) -> dict[str, DatasetSource]:
    """Read a sources.json registry (default: the one beside this script)."""
    path = Path(path) if path is not None else SOURCES
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the source registry ({exc})") from None
    out = {}
    for name, d in raw.get("datasets", {}).items():
        try:
            files = tuple(
                FileSource(filename=f["filename"], url=f.get("url"), sha256=(f.get("sha256") or None),
                           archive=f.get("archive"), to=f.get("to"), map=tuple(f.get("map", ())),
                           size=f.get("size"))
                for f in d["files"])
            checks = tuple(Check(c.get("path", ""), c.get("layout", "auto"), c.get("pairs"))
                           for c in d.get("checks", [{"layout": d.get("layout", "auto"), "pairs": d.get("pairs")}]))
            ds = DatasetSource(name=name, dest=d["dest"], checks=checks, files=files, title=d.get("title", ""),
                               official=tuple(d.get("official", ())), notes=d.get("notes", ""))
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: data set {name!r} is missing the key {exc}") from None
        for f in files:
            if f.archive is not None and f.archive not in ARCHIVE_TYPES:
                raise DatasetError(f"{path}: {name}/{f.filename}: unknown archive type {f.archive!r} "
                                   f"(expected one of {', '.join(ARCHIVE_TYPES)})")
            if f.sha256 is not None and (len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256)):
                raise DatasetError(f"{path}: {name}/{f.filename}: sha256 must be 64 lowercase hex digits")
            if PurePosixPath(f.filename).is_absolute() or ".." in PurePosixPath(f.filename).parts:
                raise DatasetError(f"{path}: {name}/{f.filename}: file names must be relative, without '..'")
        out[name] = ds
    return out


# --------------------------------------------------------------------------------------------------
# download

def _progress(label: str, total: Optional[int]) -> Callable[[int], None]:
    """A progress callback: tqdm when it is installed (it is a kit dependency), else a line a second."""
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False, disable=None)
        return bar.update
    except ImportError:  # pragma: no cover - tqdm is a dependency of the kit
        state = {"done": 0, "t": 0.0}

        def update(n: int) -> None:
            state["done"] += n
            if time.monotonic() - state["t"] > 1:
                state["t"] = time.monotonic()
                print(f"  {label}: {state['done'] / 1e6:.1f} MB" + (f" of {total / 1e6:.1f}" if total else ""),
                      file=sys.stderr)
        return update


def download(url: str, dest: PathLike, sha256: Optional[str], *, timeout: float = 60.0,
             quiet: bool = False) -> Path:
    """Fetch `url` to `dest` through `dest.part` (resumed when present), verify, rename into place.

    An existing `dest` with the right checksum is kept as is. A checksum mismatch deletes the
    download and raises ChecksumError; a transfer cut short keeps the .part file for the next try.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or file_sha256(dest) == sha256:
            return dest
        dest.unlink()  # a stale or corrupt copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if status == 206 and offset:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    raise DownloadError(f"{url}: server resumed at the wrong place ({content_range!r}, "
                                        f"expected byte {offset}); delete {part} and retry")
                mode = "ab"
            else:
                mode, offset = "wb", 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            expected_total = offset + int(length) if length is not None else None
            update = _progress(dest.name, expected_total) if not quiet else (lambda n: None)
            if offset:
                update(offset)
            try:
                with open(part, mode) as out:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        update(len(block))
            except (OSError, http.client.HTTPException) as exc:  # reset connection, IncompleteRead, timeout
                raise DownloadError(f"{url}: transfer interrupted ({exc.__class__.__name__}: {exc}); "
                                    f"rerun to resume from {part}") from None
            if expected_total is not None and part.stat().st_size != expected_total:
                raise DownloadError(f"{url}: transfer cut short ({part.stat().st_size} of {expected_total} bytes); "
                                    f"rerun to resume from {part}")
    actual = file_sha256(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise ChecksumError(f"{url}: sha256 mismatch for {dest.name}: expected {sha256}, got {actual}; "
                            f"the download was deleted")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------------
# extraction and layout

def _safe_member(name: str, archive: Path) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{archive}: refusing archive member {name!r}: its path leaves the extraction folder")
    return str(p)


def extract(archive: Path, kind: str, into: Path) -> None:
    """Extract a zip or tar archive into `into`, refusing members whose paths would escape it."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _safe_member(info.filename, archive)
                z.extractall(into)
        else:
            with tarfile.open(archive, "r:*") as t:
                members = t.getmembers()
                for m in members:
                    _safe_member(m.name, archive)
                    if m.issym() or m.islnk():
                        raise DatasetError(f"{archive}: refusing link member {m.name!r} in a data archive")
                if hasattr(tarfile, "data_filter"):
                    t.extractall(into, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    t.extractall(into, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"{archive}: not a valid {kind} archive ({exc}); delete it and fetch again") from None


def _single_top(folder: Path) -> Path:
    """The one top-level folder of an extraction (ignoring macOS metadata), or the folder itself."""
    entries = [p for p in folder.iterdir() if p.name not in ("__MACOSX", ".DS_Store")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _place(src_root: Path, rules: Sequence[dict], out: Path, archive: Path) -> None:
    """Move parts of an extracted archive into the data set folder, as the registry's map says."""
    if not rules:
        rules = [{"from": "", "to": ""}]
    for rule in rules:
        pattern, to = rule.get("from", ""), rule.get("to", "")
        if pattern in ("", "."):
            matches = [_single_top(src_root)]
        else:
            matches = sorted(p for p in src_root.glob(pattern) if "__MACOSX" not in p.parts)
        if len(matches) != 1:
            listing = ", ".join(str(m.relative_to(src_root)) for m in matches[:10]) or "nothing"
            raise DatasetError(f"{archive}: map rule from={pattern!r} must match exactly one path in the archive; "
                               f"it matched {listing}")
        src, target = matches[0], out / to
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for child in src.iterdir():
                if child.name in ("__MACOSX", ".DS_Store"):
                    continue
                if (target / child.name).exists():
                    raise DatasetError(f"{archive}: {child.name} would overwrite {target / child.name}")
                shutil.move(str(child), str(target / child.name))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(target))


# --------------------------------------------------------------------------------------------------
# one data set, end to end

def file_url(ds: DatasetSource, f: FileSource, mirror: Optional[str]) -> Optional[str]:
    if mirror:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(ds.name)}/{urllib.parse.quote(f.filename)}"
    return f.url


def validate(ds: DatasetSource, folder: Path) -> str:
    """Check a laid-out data set against the registry; returns a summary like "100 pairs (rain100)"."""
    parts = []
    for c in ds.checks:
        where = folder / c.path if c.path else folder
        pairs = discover_pairs(where, layout=c.layout)
        if c.pairs is not None and len(pairs) != c.pairs:
            raise DatasetError(f"{where}: expected {c.pairs} pairs, found {len(pairs)}")
        parts.append(f"{c.path + ': ' if c.path else ''}{len(pairs)} pairs ({pairs[0].layout})")
    return ", ".join(parts)


def fetch_dataset(ds: DatasetSource, dest_root: PathLike, *, mirror: Optional[str] = None,
                  allow_unverified: bool = False, force: bool = False, quiet: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """Download, verify, extract and lay out one data set under `dest_root`; returns its folder."""
    dest_root = Path(dest_root).expanduser()
    final = dest_root / ds.dest
    if final.exists() and not force:
        log(f"{ds.name}: already at {final} ({validate(ds, final)}); --force to fetch again")
        return final
    cache = dest_root / ".downloads" / ds.name
    # Refuse before downloading anything: unverifiable files, and files with nowhere to come from.
    unverified = [f.filename for f in ds.files if not f.sha256]
    if unverified and not allow_unverified:
        shown = ", ".join(unverified[:5]) + (f" ... ({len(unverified)} in all)" if len(unverified) > 5 else "")
        raise DatasetError(
            f"{ds.name}: no sha256 is recorded for {shown}, so the download cannot be verified. Pass "
            f"--allow-unverified to fetch it anyway (the computed checksums are printed so they can be "
            f"added to {SOURCES.name}).")
    missing = [f for f in ds.files if not file_url(ds, f, mirror) and not (cache / f.filename).exists()]
    if missing:
        pages = "; ".join(ds.official) or "(none recorded)"
        raise DatasetError(
            f"{ds.name}: no direct download URL is known for {', '.join(f.filename for f in missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}. The authors host it at: {pages}. Download it by hand and "
            f"put it at {cache / missing[0].filename}, or pass --mirror URL (files are fetched from "
            f"URL/{ds.name}/<filename>).")
    local: list[tuple[FileSource, Path]] = []
    many = len(ds.files) > 20  # per-file sets: one bar over files rather than a line per file
    items = list(enumerate(ds.files))
    if many and not quiet:
        from tqdm import tqdm

        items = tqdm(items, desc=f"{ds.name} files", unit="file", leave=False)
    for i, f in items:
        target = cache / f.filename
        url = file_url(ds, f, mirror)
        if url is None:  # dropped there by hand (checked above that it exists)
            actual = file_sha256(target)
            if f.sha256 and actual != f.sha256:
                raise ChecksumError(f"{target}: sha256 mismatch: expected {f.sha256}, got {actual}; "
                                    f"replace the file with the original download")
        else:
            if not quiet and not many:
                log(f"{ds.name}: [{i + 1}/{len(ds.files)}] {url}")
            download(url, target, f.sha256, quiet=quiet or many)
        if not f.sha256:
            log(f"{ds.name}: UNVERIFIED {f.filename} sha256 {file_sha256(target)}")
        local.append((f, target))
    if many and not quiet:
        log(f"{ds.name}: {len(ds.files)} files downloaded" + (" and verified" if ds.verified else ""))

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{ds.name}-", dir=final.parent))
    out = staging / "out"
    out.mkdir()
    keep_staging = False
    try:
        for k, (f, path) in enumerate(local):
            if f.archive is None:
                target = out / (f.to or f.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            else:
                raw = staging / f"raw{k}"
                extract(path, f.archive, raw)
                _place(raw, [dict(r) for r in f.map], out, path)
                shutil.rmtree(raw)
        try:
            summary = validate(ds, out)
        except DatasetError as exc:
            keep_staging = True
            raise DatasetError(f"{ds.name}: the fetched files do not form the expected data set: {exc}\n"
                               f"  They are left in {out} for inspection.") from None
        if final.exists():
            shutil.rmtree(final)
        os.rename(out, final)
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"{ds.name}: {summary} at {final}")
    return final


# --------------------------------------------------------------------------------------------------
# command line

def _list(registry: dict[str, DatasetSource]) -> None:
    print(f"{'data set':<16} {'pairs':>6} {'files':>5}  {'checksums':<12} {'direct URL':<10} dest")
    for ds in registry.values():
        n_sha = sum(1 for f in ds.files if f.sha256)
        sums = "verified" if ds.verified else ("none" if n_sha == 0 else f"{n_sha}/{len(ds.files)}")
        direct = "yes" if all(f.url for f in ds.files) else ("no" if not any(f.url for f in ds.files) else "partly")
        print(f"{ds.name:<16} {ds.pairs if ds.pairs is not None else '?':>6} {len(ds.files):>5}  {sums:<12} "
              f"{direct:<10} {ds.dest}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", help="data set names (see --list), or 'all'")
    parser.add_argument("--dest", default=None, help="data root (default: $DERAINKIT_DATA or ~/.cache/derainkit/data)")
    parser.add_argument("--mirror", default=None, help="base URL; files are fetched from MIRROR/<set>/<filename>")
    parser.add_argument("--allow-unverified", action="store_true", help="fetch files with no recorded sha256")
    parser.add_argument("--force", action="store_true", help="fetch again even if the data set is already there")
    parser.add_argument("--sources", default=None, help=f"registry file (default: {SOURCES})")
    parser.add_argument("--list", action="store_true", help="list the registry and exit")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    registry = load_registry(args.sources)
    if args.list or not args.datasets:
        _list(registry)
        return 0
    names = list(registry) if args.datasets == ["all"] else args.datasets
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"error: unknown data set(s) {', '.join(unknown)}; known: {', '.join(registry)}", file=sys.stderr)
        return 2
    dest = Path(args.dest) if args.dest else data_root()
    failed = []
    for name in names:
        try:
            fetch_dataset(registry[name], dest, mirror=args.mirror, allow_unverified=args.allow_unverified,
                          force=args.force, quiet=args.quiet)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
