"""Manifests: relative paths, sizes, checksums, and a digest that follows the files and nothing else."""
from __future__ import annotations

import csv
import hashlib
import shutil

import cv2
import numpy as np
import pytest

from derainkit.data import discover_pairs, manifest_digest, read_manifest, write_manifest
from derainkit.data.manifest import COLUMNS
from derainkit.errors import DatasetError, ImageReadError


def _img(h, w, value):
    return np.full((h, w, 3), value, np.uint8)


def _rain100(root, n=3, h=6, w=10):
    for i in range(1, n + 1):
        (root / "rain").mkdir(parents=True, exist_ok=True)
        (root / "norain").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "rain" / f"norain-{i}.png"), _img(h, w, 100 + i))
        cv2.imwrite(str(root / "norain" / f"norain-{i}.png"), _img(h, w, i))
    return root


def test_manifest_contents_and_digest(tmp_path):
    root = _rain100(tmp_path / "d")
    pairs = discover_pairs(root)
    out = tmp_path / "m" / "manifest.csv"
    digest = write_manifest(pairs, out)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest() == manifest_digest(pairs)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [r["id"] for r in rows] == ["norain-1", "norain-2", "norain-3"]
    r = rows[1]
    assert r["rainy"] == "rain/norain-2.png" and r["clean"] == "norain/norain-2.png"  # relative to the root
    assert (r["height"], r["width"], r["clean_side"]) == ("6", "10", "")
    assert r["rainy_sha256"] == hashlib.sha256((root / "rain" / "norain-2.png").read_bytes()).hexdigest()
    assert r["clean_sha256"] == hashlib.sha256((root / "norain" / "norain-2.png").read_bytes()).hexdigest()
    assert read_manifest(out) == rows
    assert not list(out.parent.glob(".*.tmp"))  # written via a temp file, renamed


def test_digest_follows_content_not_location(tmp_path):
    root = _rain100(tmp_path / "a")
    digest = manifest_digest(discover_pairs(root))
    shutil.copytree(root, tmp_path / "elsewhere" / "b")
    assert manifest_digest(discover_pairs(tmp_path / "elsewhere" / "b")) == digest
    cv2.imwrite(str(root / "norain" / "norain-3.png"), _img(6, 10, 4))  # one image changes
    assert manifest_digest(discover_pairs(root)) != digest


def test_side_by_side_unpaired_and_rain1400_rows(tmp_path):
    sbs = tmp_path / "sbs"
    sbs.mkdir()
    cv2.imwrite(str(sbs / "1.png"), np.concatenate([_img(8, 12, 10), _img(8, 12, 30)], axis=1))
    (row,) = read_rows(discover_pairs(sbs, layout="side_by_side"), tmp_path / "s.csv")
    assert (row["width"], row["height"], row["clean_side"]) == ("12", "8", "left")
    assert row["rainy"] == row["clean"] == "1.png" and row["rainy_sha256"] == row["clean_sha256"]

    real = tmp_path / "real"
    real.mkdir()
    cv2.imwrite(str(real / "Eg1.jpg"), _img(5, 7, 50))
    (row,) = read_rows(discover_pairs(real), tmp_path / "u.csv")
    assert row["clean"] == "" and row["clean_sha256"] == "" and row["width"] == "7"

    ddn = tmp_path / "ddn"
    (ddn / "ground_truth").mkdir(parents=True)
    (ddn / "rainy_image").mkdir()
    cv2.imwrite(str(ddn / "ground_truth" / "1.jpg"), _img(5, 5, 50))
    for i in (1, 2):
        cv2.imwrite(str(ddn / "rainy_image" / f"1_{i}.jpg"), _img(5, 5, 60 + i))
    rows = read_rows(discover_pairs(ddn), tmp_path / "r.csv")
    assert [r["id"] for r in rows] == ["1_1", "1_2"] and rows[0]["clean_sha256"] == rows[1]["clean_sha256"]


def read_rows(pairs, path):
    write_manifest(pairs, path)
    return read_manifest(path)


def test_bad_manifest_inputs(tmp_path):
    with pytest.raises(DatasetError, match="empty list of pairs"):
        write_manifest([], tmp_path / "m.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"x\.csv: not a derainkit manifest"):
        read_manifest(tmp_path / "x.csv")
    with pytest.raises(DatasetError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    root = _rain100(tmp_path / "d", n=1)
    pairs = discover_pairs(root)
    (root / "rain" / "norain-1.png").unlink()
    with pytest.raises(ImageReadError, match=r"rain/norain-1\.png: file not found"):
        write_manifest(pairs, tmp_path / "m.csv")


def test_shared_rain100l_manifest_matches_shared_checksums(shared, tmp_path):
    root = shared("data", "rain100l", "test")
    sums = {}
    for line in shared("SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("./")] = digest
    rows = read_rows(discover_pairs(root), tmp_path / "m.csv")
    assert len(rows) == 100
    for r in rows[:20]:
        assert r["rainy_sha256"] == sums[f"data/rain100l/test/{r['rainy']}"]
        assert r["clean_sha256"] == sums[f"data/rain100l/test/{r['clean']}"]
        assert {r["height"], r["width"]} == {"321", "481"}
