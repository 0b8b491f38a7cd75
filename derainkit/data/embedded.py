"""The kit's embedded default data set: synthetic rain on photographs shipped inside scikit-image.

Needs no download, builds in about a second, and is small enough for CPU smoke runs:

* test:  6 pairs, 160×240 (H×W) crops of astronaut, coffee, chelsea, motorcycle (left view), camera
         and coins;
* train: 128×128 tiles on a 128-pixel grid over astronaut, coffee, motorcycle, camera (only tiles
         that do not touch that image's test crop), immunohistochemistry, grass and brick.

Train and test never share a pixel of a source image (the boxes are recorded in ``embedded.json``
and checked by the tests). Only PNG sources are used (JPEG decoders differ in their last bits
between libjpeg versions); gray sources are repeated into RGB. Rain is the "light" preset
(Rain100L-like), seeded per image.

Same bytes on every machine: images are cropped, never resampled; the rain generator is exact
(see `derainkit.data.synthetic`); and files are written by a tiny PNG writer that stores the pixels
uncompressed (zlib "stored" blocks), because compressed PNG bytes depend on the zlib build (zlib-ng,
which several distributions now ship, compresses differently). The price is size: about 11 MB.

The set is built on first use into ``<cache>/embedded/<version key>/`` (cache: $DERAINKIT_CACHE or
~/.cache/derainkit), in a temporary folder renamed into place, so a half-built set is never seen and
two processes racing to build it both end up with one complete copy. The version key covers the
generator version, the rain parameters and the decoded source pixels, so any change rebuilds.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from derainkit.data.paths import cache_dir
from derainkit.data.synthetic import PRESETS, add_rain
from derainkit.errors import DatasetError
from derainkit.fsutil import atomic_write_bytes, atomic_write_text

GENERATOR_VERSION = "1"
SPLITS = ("train", "test")
TILE = 128
TEST_SIZE = (160, 240)  # H, W
RAIN_PRESET = "light"
_SEED = 20240521  # base of every image's seed sequence
_MARKER = "embedded.json"


def _gray(fn: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.repeat(np.asarray(fn())[:, :, None], 3, axis=2)


def _sources() -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as sd

    # Only PNG files bundled in the scikit-image wheel (no pooch download, no JPEG decoding).
    return {
        "astronaut": sd.astronaut,
        "coffee": sd.coffee,
        "chelsea": sd.chelsea,
        "motorcycle": lambda: sd.stereo_motorcycle()[0],
        "camera": _gray(sd.camera),
        "coins": _gray(sd.coins),
        "immunohistochemistry": sd.immunohistochemistry,
        "grass": _gray(sd.grass),
        "brick": _gray(sd.brick),
    }


# Test crop origins (y, x) of TEST_SIZE boxes, chosen by eye on the subject of each photo.
_TEST_BOXES = {
    "astronaut": (40, 140),
    "coffee": (120, 180),
    "chelsea": (70, 100),
    "motorcycle": (170, 250),
    "camera": (60, 130),
    "coins": (70, 70),
}
_TRAIN_SOURCES = ("astronaut", "coffee", "motorcycle", "camera", "immunohistochemistry", "grass", "brick")


def _load_sources() -> dict[str, np.ndarray]:
    out = {}
    for name, fn in _sources().items():
        try:
            arr = np.ascontiguousarray(fn())
        except Exception as exc:  # noqa: BLE001 - any failure here means the bundled file is unusable
            raise DatasetError(
                f"embedded data set: cannot load scikit-image's bundled image {name!r} ({type(exc).__name__}: {exc}); "
                f"reinstall scikit-image") from None
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise DatasetError(f"embedded data set: scikit-image's {name!r} is {arr.dtype} {arr.shape}, "
                               f"expected uint8 H×W×3")
        out[name] = arr
    return out


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    (ay, ax, ah, aw), (by, bx, bh, bw) = a, b
    return ay < by + bh and by < ay + ah and ax < bx + bw and bx < ax + aw


def crop_plan(shapes: dict[str, tuple[int, ...]]) -> list[dict]:
    """Every crop of the set: split, file name, source, box (y, x, h, w). Pure function of source sizes."""
    plan = []
    for name, (y, x) in _TEST_BOXES.items():
        plan.append({"split": "test", "name": name, "source": name, "box": [y, x, *TEST_SIZE]})
    for name in _TRAIN_SOURCES:
        h, w = shapes[name][:2]
        test_box = tuple(next((c["box"] for c in plan if c["source"] == name and c["split"] == "test"), [0, 0, 0, 0]))
        k = 0
        for y in range(0, h - TILE + 1, TILE):
            for x in range(0, w - TILE + 1, TILE):
                box = (y, x, TILE, TILE)
                if _overlaps(box, test_box):
                    continue
                plan.append({"split": "train", "name": f"{name}-{k:02d}", "source": name, "box": list(box)})
                k += 1
    return plan


def _write_png_stored(path: Path, rgb: np.ndarray) -> None:
    """Write an 8-bit RGB PNG with uncompressed deflate blocks: identical bytes on every platform."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))  # filter type 0 on every row
    blocks = []
    for start in range(0, len(raw), 65535):
        chunk = raw[start:start + 65535]
        final = 1 if start + 65535 >= len(raw) else 0
        blocks.append(struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF) + chunk)
    zdata = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw) & 0xFFFFFFFF)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zdata) + chunk(b"IEND", b""))
    atomic_write_bytes(path, png)


def _version_key(sources: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(f"embedded v{GENERATOR_VERSION} seed {_SEED} preset {RAIN_PRESET}\n".encode())
    h.update(json.dumps(PRESETS[RAIN_PRESET].to_dict(), sort_keys=True).encode())
    for name in sorted(sources):
        arr = sources[name]
        h.update(f"{name} {arr.shape}\n".encode())
        h.update(arr.tobytes())
    return f"v{GENERATOR_VERSION}-{h.hexdigest()[:12]}"


def folder_digest(folder: Path) -> str:
    """sha256 over every file under `folder` (relative path and bytes), in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _build(dest: Path, sources: dict[str, np.ndarray], key: str) -> None:
    params = PRESETS[RAIN_PRESET]
    plan = crop_plan({k: v.shape for k, v in sources.items()})
    for index, item in enumerate(plan):
        y, x, h, w = item["box"]
        src = sources[item["source"]]
        if y + h > src.shape[0] or x + w > src.shape[1]:
            raise DatasetError(f"embedded data set: crop {item['name']} {item['box']} falls outside "
                               f"{item['source']} {src.shape[:2]}")
        clean_u8 = src[y:y + h, x:x + w]
        clean = clean_u8.astype(np.float32) / np.float32(255.0)
        split_id = SPLITS.index(item["split"])
        rainy = add_rain(clean, params, seed=np.random.SeedSequence([_SEED, split_id, index]))
        rainy_u8 = np.round(rainy.astype(np.float64) * 255.0).astype(np.uint8)
        base = dest / item["split"]
        _write_png_stored(base / "norain" / f"{item['name']}.png", clean_u8)
        _write_png_stored(base / "rain" / f"{item['name']}.png", rainy_u8)
    meta = {
        "version_key": key,
        "generator_version": GENERATOR_VERSION,
        "rain_preset": RAIN_PRESET,
        "rain_params": params.to_dict(),
        "seed": _SEED,
        "layout": "rain100",
        "crops": plan,
        "digests": {split: folder_digest(dest / split) for split in SPLITS},
    }
    atomic_write_text(dest / _MARKER, json.dumps(meta, indent=1, sort_keys=True) + "\n")


@functools.lru_cache(maxsize=1)
def _sources_and_key() -> tuple[dict[str, np.ndarray], str]:
    # Loaded once per process: the key is needed on every call, to find an existing build.
    sources = _load_sources()
    return sources, _version_key(sources)


def build_embedded(cache: os.PathLike | str | None = None) -> Path:
    """Build (if needed) the embedded set and return its folder, which holds train/, test/ and embedded.json."""
    sources, key = _sources_and_key()
    parent = (Path(cache) if cache is not None else cache_dir()) / "embedded"
    final = parent / key
    if (final / _MARKER).is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=parent))
    try:
        _build(tmp, sources, key)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target exists and is not empty): use its copy.
            if not (final / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def embedded_root(split: str = "test") -> Path:
    """Folder of the embedded set's `split` ("train" or "test"), in the rain100 layout; built on first use."""
    if split not in SPLITS:
        raise DatasetError(f"embedded data set: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return build_embedded() / split


def embedded_info() -> dict:
    """The metadata of the embedded set (version key, rain parameters, crop boxes, per-split digests)."""
    return json.loads((build_embedded() / _MARKER).read_text())


def resolve_data_path(spec: str | os.PathLike) -> Path:
    """A data folder, ``data:NAME`` for ``<data root>/NAME`` (e.g. ``data:rain100l/test``, see
    :func:`derainkit.data.paths.data_root`), or ``embedded:train`` / ``embedded:test`` (``embedded``
    alone: test) for the built-in set."""
    text = str(spec)
    if text == "embedded" or text.startswith("embedded:"):
        split = text.partition(":")[2] or "test"
        if split not in ("train", "test"):
            raise DatasetError(f"{text}: the embedded set has splits 'train' and 'test'")
        return embedded_root(split)
    if text.startswith("data:"):
        from derainkit.data.paths import data_root

        name = text.partition(":")[2].strip("/")
        if not name or any(part in ("..", ".") for part in name.split("/")) or name.startswith("~"):
            raise DatasetError(f"{text}: a data: name is a folder inside the data root, like data:rain100l/test "
                               "(no '..', '.' or '~'); give any other folder as a plain path")
        path = data_root() / name
        if not path.exists():
            raise DatasetError(f"{text}: no folder {path} in the data root; fetch it with "
                               f"`python data_scripts/fetch.py {name.split('/')[0]}` or link a local copy with "
                               "`python data_scripts/link_shared.py` (or set DERAINKIT_DATA)")
        return path
    return Path(text).expanduser()
