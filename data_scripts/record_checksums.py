#!/usr/bin/env python3
"""Record a local copy of a data set in the registry, one entry (path + sha256) per file.

    python data_scripts/record_checksums.py rain100l-test ../shared/data/rain100l/test
    python data_scripts/record_checksums.py nlcl-realrain ../shared/data/nlcl_realrain/rainy \\
        --url-template 'https://raw.githubusercontent.com/OWNER/REPO/COMMIT/datasets/RealRain/valA/{name}'

Replaces the data set's ``files`` list in sources.json (its other keys are kept). Each file's
``filename`` is its path relative to FOLDER, which is also where a mirror must hold it
(``{mirror}/{set}/{filename}``) and where it lands in the fetched data set. With ``--url-template``
each file also gets an original URL (``{path}``: the relative path, ``{name}``: the file name).
Use it only on a copy you trust to be the original bytes: the checksums become the reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from derainkit.data.layouts import natural_key
from derainkit.data.manifest import file_sha256
from derainkit.io import IMAGE_EXTENSIONS

SOURCES = Path(__file__).resolve().with_name("sources.json")


def file_entries(folder: Path, url_template: Optional[str] = None) -> list[dict]:
    """One registry entry per image file under `folder` (recursively), in natural order."""
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                   key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    entries = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        url = url_template.format(path=rel, name=p.name) if url_template else None
        entries.append({"filename": rel, "url": url, "sha256": file_sha256(p), "size": p.stat().st_size})
    return entries


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--url-template", default=None)
    parser.add_argument("--sources", type=Path, default=SOURCES)
    args = parser.parse_args(argv)
    registry = json.loads(args.sources.read_text())
    if args.dataset not in registry["datasets"]:
        print(f"error: {args.dataset} is not in {args.sources}; add its entry (title, dest, layout, pairs) first",
              file=sys.stderr)
        return 2
    entries = file_entries(args.folder, args.url_template)
    if not entries:
        print(f"error: {args.folder}: no image files", file=sys.stderr)
        return 2
    registry["datasets"][args.dataset]["files"] = entries
    args.sources.write_text(json.dumps(registry, indent=1) + "\n")
    print(f"{args.dataset}: recorded {len(entries)} files from {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
