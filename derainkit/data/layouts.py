"""Find rainy/clean pairs in the folder layouts the deraining literature ships its data in.

Supported layouts (`LAYOUTS`), each detected from the folder's contents, or forced by name:

``rain100``       JORDER / Rain100L-H / Rain200: ``rain/X.png`` <-> ``norain/X.png`` (same file name).
                  ``rainy/`` is accepted in place of ``rain/``, and JORDER's ``rain/X2/norain-1x2.png``
                  (rainy name = clean name + ``x2``) is paired too.
``prenet``        PReNet's copies: rainy ``rain-N.png`` <-> clean ``norain-N.png``; rainy files in the root
                  or in ``rainy/`` (or ``rain/``), clean files in the root or in ``norain/``. Told apart from
                  ``rain100`` by the names: rain100's rainy files carry the clean name (often ``norain-N``),
                  PReNet's start with ``rain-``.
``mprnet``        MPRNet / Restormer / Rain13K: ``input/X`` <-> ``target/X``.
``side_by_side``  DCSFN / JDNet / MSGNN: one file holds both images, ``[clean | rainy]`` by default
                  (``clean_side`` says which half is clean). The halves are ``W = int(width / 2)`` columns, as
                  in the official code. That code takes ``img[:, W:]`` as the right half, so an odd-width file
                  gives halves of W and W+1 columns, a mismatch its random cropping hides. The kit refuses
                  such files with a DatasetError instead of silently dropping a column.
``rain1400``      DDN's Rain1400 / Rain12600: ``rainy_image/K_i.jpg`` (i = 1..14) <-> ``ground_truth/K.jpg``;
                  every rainy image is its own pair, so a clean image appears in 14 pairs.
``unpaired``      real rainy photos with no ground truth: the images in the folder itself (or in its
                  ``rainy/`` / ``rain/`` subfolder when forced by name); ``clean`` is None.

Matching is by file stem, so a rainy ``X.jpg`` pairs with a clean ``X.png``. Hidden files and non-image
files are ignored. Pairs come back in natural order (``norain-2`` before ``norain-10``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from derainkit.errors import DatasetError, ImageReadError
from derainkit.io import IMAGE_EXTENSIONS, _exif_orientation, read_image

PathLike = Union[str, os.PathLike]

CLEAN_SIDES = ("left", "right")

_RAINY_DIRS = ("rain", "rainy")  # rain100's rainy folder names, in order of preference
_EXIF_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")  # where load_image honours EXIF orientation
_MAX_LISTED = 10  # how many offending names an error message spells out before "and N more"


@dataclass(frozen=True)
class Pair:
    """One training/test sample: where its rainy and clean pixels live.

    For ``side_by_side`` pairs `rainy` and `clean` are the same file and `clean_side` says which half
    is clean; for every other layout `clean_side` is None. `root` is the folder `discover_pairs` was
    given, used to write paths relative to it (manifests).
    """

    id: str
    rainy: Path
    clean: Optional[Path]
    layout: str
    root: Path
    clean_side: Optional[str] = None

    @property
    def is_side_by_side(self) -> bool:
        return self.clean_side is not None

    @property
    def has_clean(self) -> bool:
        return self.clean is not None


# --------------------------------------------------------------------------------------------------
# small helpers

def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: norain-2 < norain-10, 9_14 < 10_1."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p != "")


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside `folder` (no recursion), hidden files skipped, natural order."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _name_list(paths: Sequence[Path], root: Path) -> str:
    shown = ", ".join(_rel(p, root) for p in paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _folder_summary(root: Path) -> str:
    """What a folder holds, for error messages: its subfolders and how many images/other files."""
    try:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        return f"(cannot list: {exc.strerror or exc})"
    dirs = sorted((p.name + "/" for p in entries if p.is_dir()), key=natural_key)
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS]
    parts = []
    if dirs:
        parts.append("folders " + ", ".join(dirs[:_MAX_LISTED]) + (" ..." if len(dirs) > _MAX_LISTED else ""))
    parts.append(f"{len(images)} image file(s)")
    if others:
        names = sorted((p.name for p in others), key=natural_key)
        parts.append(f"{len(others)} other file(s) ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    return "; ".join(parts)


def _stem_map(files: Iterable[Path], root: Path, what: str, strip: Optional[re.Pattern] = None) -> dict[str, Path]:
    """Map each file's stem (optionally normalised) to the file; two files with one stem is an error."""
    out: dict[str, Path] = {}
    for f in files:
        stem = f.stem
        if strip is not None:
            stem = strip.sub("", stem)
        if stem in out:
            raise DatasetError(
                f"{root}: two {what} files share the name {stem!r}: {_rel(out[stem], root)} and "
                f"{_rel(f, root)}; keep one of them")
        out[stem] = f
    return out


def _check_root(root: PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a data folder, got a file")
    return root


def _require_images(files: list[Path], folder: Path, what: str) -> None:
    if not files:
        raise DatasetError(
            f"{folder}: no {what} images (looked for {', '.join(IMAGE_EXTENSIONS)}); it holds {_folder_summary(folder)}")


def _pair_up(root: Path, layout: str, rainy: dict[str, Path], clean: dict[str, Path]) -> list[Pair]:
    """Join rainy and clean files on their (normalised) stems; any file left over is an error."""
    rainy_only = [rainy[k] for k in sorted(rainy.keys() - clean.keys(), key=natural_key)]
    clean_only = [clean[k] for k in sorted(clean.keys() - rainy.keys(), key=natural_key)]
    _raise_unmatched(root, layout, rainy_only, clean_only)
    return [Pair(id=k, rainy=rainy[k], clean=clean[k], layout=layout, root=root)
            for k in sorted(rainy, key=natural_key)]


def _raise_unmatched(root: Path, layout: str, rainy_only: Sequence[Path], clean_only: Sequence[Path]) -> None:
    if not rainy_only and not clean_only:
        return
    lines = [f"{root}: rainy and clean files do not match up (layout {layout!r})"]
    if rainy_only:
        lines.append(f"  {len(rainy_only)} rainy file(s) have no clean partner: {_name_list(rainy_only, root)}")
    if clean_only:
        lines.append(f"  {len(clean_only)} clean file(s) have no rainy partner: {_name_list(clean_only, root)}")
    raise DatasetError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# per-layout discovery: each returns pairs, or raises DatasetError saying why the folder does not fit

_PRENET_RAINY = re.compile(r"^rain-", re.IGNORECASE)
_PRENET_CLEAN = re.compile(r"^norain-", re.IGNORECASE)
_JORDER_SCALE = re.compile(r"x\d+$")  # JORDER's rain/X2/norain-1x2.png
_DDN_RAINY = re.compile(r"^(.+)_(\d+)$")


def _rain100_rainy_files(root: Path) -> tuple[Optional[Path], list[Path]]:
    for name in _RAINY_DIRS:
        folder = root / name
        if folder.is_dir():
            files = _images_in(folder)
            if not files:
                # JORDER's own archive keeps the rainy images one level down, in rain/X2/.
                subs = [d for d in _subdirs(folder) if _images_in(d)]
                if len(subs) == 1:
                    return subs[0], _images_in(subs[0])
            return folder, files
    return None, []


def _discover_rain100(root: Path) -> list[Pair]:
    rainy_dir, rainy_files = _rain100_rainy_files(root)
    clean_dir = root / "norain"
    if rainy_dir is None or not clean_dir.is_dir():
        raise DatasetError(
            f"{root}: layout 'rain100' expects rain/ (or rainy/) and norain/ folders; "
            f"it holds {_folder_summary(root)}")
    _require_images(rainy_files, rainy_dir, "rainy")
    clean_files = _images_in(clean_dir)
    _require_images(clean_files, clean_dir, "clean")
    clean = _stem_map(clean_files, root, "clean")
    rainy = _stem_map(rainy_files, root, "rainy")
    if not rainy.keys() & clean.keys():
        stripped = _stem_map(rainy_files, root, "rainy", _JORDER_SCALE)
        if stripped.keys() & clean.keys():
            rainy = stripped
    return _pair_up(root, "rain100", rainy, clean)


def _prenet_locations(root: Path) -> tuple[list[Path], list[Path]]:
    rainy = [p for p in _images_in(root) if _PRENET_RAINY.match(p.name)]
    for name in ("rainy", "rain"):
        rainy += [p for p in _images_in(root / name) if _PRENET_RAINY.match(p.name)]
    clean = [p for p in _images_in(root) if _PRENET_CLEAN.match(p.name)]
    clean += [p for p in _images_in(root / "norain") if _PRENET_CLEAN.match(p.name)]
    return rainy, clean


def _discover_prenet(root: Path) -> list[Pair]:
    rainy_files, clean_files = _prenet_locations(root)
    if not rainy_files or not clean_files:
        raise DatasetError(
            f"{root}: layout 'prenet' expects rainy files rain-N.* (in the folder, rainy/ or rain/) and clean "
            f"files norain-N.* (in the folder or norain/); found {len(rainy_files)} rain-* and "
            f"{len(clean_files)} norain-* image(s); it holds {_folder_summary(root)}")
    rainy = _stem_map(rainy_files, root, "rainy", _PRENET_RAINY)
    clean = _stem_map(clean_files, root, "clean", _PRENET_CLEAN)
    pairs = _pair_up(root, "prenet", rainy, clean)
    # Ids keep the clean file's name (norain-N), the name the other layouts and papers use.
    return [Pair(id=p.clean.stem, rainy=p.rainy, clean=p.clean, layout="prenet", root=root) for p in pairs]


def _discover_mprnet(root: Path) -> list[Pair]:
    rainy_dir, clean_dir = root / "input", root / "target"
    if not (rainy_dir.is_dir() and clean_dir.is_dir()):
        raise DatasetError(
            f"{root}: layout 'mprnet' expects input/ and target/ folders; it holds {_folder_summary(root)}")
    rainy_files, clean_files = _images_in(rainy_dir), _images_in(clean_dir)
    _require_images(rainy_files, rainy_dir, "rainy")
    _require_images(clean_files, clean_dir, "clean")
    return _pair_up(root, "mprnet", _stem_map(rainy_files, root, "rainy"), _stem_map(clean_files, root, "clean"))


def _discover_rain1400(root: Path) -> list[Pair]:
    rainy_dir, clean_dir = root / "rainy_image", root / "ground_truth"
    if not (rainy_dir.is_dir() and clean_dir.is_dir()):
        raise DatasetError(
            f"{root}: layout 'rain1400' expects rainy_image/ and ground_truth/ folders; "
            f"it holds {_folder_summary(root)}")
    rainy_files, clean_files = _images_in(rainy_dir), _images_in(clean_dir)
    _require_images(rainy_files, rainy_dir, "rainy")
    _require_images(clean_files, clean_dir, "clean")
    clean = _stem_map(clean_files, root, "clean")
    bad_names = [p for p in rainy_files if not _DDN_RAINY.match(p.stem)]
    if bad_names:
        raise DatasetError(
            f"{root}: layout 'rain1400' names rainy files K_i.* (clean image K, rain version i); "
            f"{len(bad_names)} file(s) do not follow it: {_name_list(bad_names, root)}")
    _stem_map(rainy_files, root, "rainy")  # duplicate check (K_i.jpg beside K_i.png)
    rainy_only = [p for p in rainy_files if _DDN_RAINY.match(p.stem).group(1) not in clean]
    used = {_DDN_RAINY.match(p.stem).group(1) for p in rainy_files}
    clean_only = [clean[k] for k in sorted(clean.keys() - used, key=natural_key)]
    _raise_unmatched(root, "rain1400", rainy_only, clean_only)
    return [Pair(id=p.stem, rainy=p, clean=clean[_DDN_RAINY.match(p.stem).group(1)], layout="rain1400", root=root)
            for p in rainy_files]


def _flat_images(root: Path, layout: str) -> list[Path]:
    files = _images_in(root)
    if not files:
        raise DatasetError(
            f"{root}: layout {layout!r} expects image files directly in the folder; it holds {_folder_summary(root)}")
    _stem_map(files, root, "image")
    return files


def _discover_side_by_side(root: Path, clean_side: str) -> list[Pair]:
    files = _flat_images(root, "side_by_side")
    pairs = []
    for f in files:
        _side_by_side_half_width(f, image_size(f)[1])  # fail at discovery, not mid-training
        pairs.append(Pair(id=f.stem, rainy=f, clean=f, layout="side_by_side", root=root, clean_side=clean_side))
    return pairs


def _discover_unpaired(root: Path, forced: bool) -> list[Pair]:
    folder = root
    if forced and not _images_in(root):
        # "layout='unpaired'" on a dataset folder: use its rainy images and leave the clean ones out.
        for name in ("rainy", "rain", "input", "rainy_image"):
            if _images_in(root / name):
                folder = root / name
                break
    files = _flat_images(folder, "unpaired")
    return [Pair(id=f.stem, rainy=f, clean=None, layout="unpaired", root=root) for f in files]


# --------------------------------------------------------------------------------------------------
# detection

def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image as `read_image` would return it, from the header when possible.

    Pillow reads the size without decoding the pixels, and the EXIF orientation is applied by the same
    rule as `derainkit.io.load_image` (a quarter turn swaps the sides). Files Pillow cannot parse are
    decoded by `read_image`, which names the file if it is not an image.
    """
    from derainkit.io import check_pixels, header_size

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    size = header_size(path)
    if size is None:
        h, w = read_image(path).shape[:2]
        return h, w
    height, width = size
    check_pixels(path, height, width)
    if path.suffix.lower() in _EXIF_SUFFIXES and _exif_orientation(path) in (5, 6, 7, 8):
        width, height = height, width
    return int(height), int(width)


def _side_by_side_half_width(path: Path, width: int) -> int:
    if width < 2:
        raise DatasetError(f"{path}: side-by-side image has invalid width {width}: too narrow to hold two halves")
    if width % 2:
        raise DatasetError(
            f"{path}: side-by-side image has odd width {width}; it must hold two halves of equal width (the "
            f"official code's int(width/2) split would give halves of {width // 2} and {width - width // 2} "
            f"columns). Crop or pad the file to an even width.")
    return width // 2


def _halves_similarity(path: Path) -> float:
    """How much the two halves of an image look like the same scene: about 1 for a clean/rainy pair.

    Correlates the halves' coarse structure: both are blurred enough to wash out thin rain streaks, and
    each row's mean is removed so that the usual bright-sky-on-top gradient, which any two halves of a
    photo share, does not count. Measured: >= 0.84 on Rain100L test pairs put side by side (0.66 with
    three times their rain), <= 0.47 on single photos (Rain100L clean images, NLCL's 2:1 real photos).
    Aspect ratio alone cannot tell them apart: real rainy photos are often 2:1 too.
    """
    import cv2

    img = read_image(path).mean(axis=2)
    h, w = img.shape
    half = w // 2
    if half < 8 or h < 8:
        return 0.0
    step = max(1, min(h, half) // 128)  # about 128 px on the short side is plenty
    flat = []
    for x in (img[::step, :half:step], img[::step, half:2 * half:step]):
        x = cv2.GaussianBlur(np.ascontiguousarray(x, dtype=np.float32), (0, 0), 4.0)
        flat.append((x - x.mean(axis=1, keepdims=True)).ravel().astype(np.float64))
    a, b = flat
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def _looks_side_by_side(files: Sequence[Path]) -> bool:
    # The median over a few files, so one odd image does not decide for the folder.
    scores = [_halves_similarity(f) for f in files[:5]]
    return bool(scores) and float(np.median(scores)) > 0.6


# Layout name -> discovery function (the one list of layouts: LAYOUTS, the CLI help and the run config
# read it). Each takes the root plus the options only some layouts use.
_DISCOVER = {
    "rain100": lambda root, **_: _discover_rain100(root),
    "prenet": lambda root, **_: _discover_prenet(root),
    "mprnet": lambda root, **_: _discover_mprnet(root),
    "side_by_side": lambda root, clean_side, **_: _discover_side_by_side(root, clean_side),
    "rain1400": lambda root, **_: _discover_rain1400(root),
    "unpaired": lambda root, forced, **_: _discover_unpaired(root, forced),
}
LAYOUTS = tuple(_DISCOVER)


def _candidates(root: Path) -> list[str]:
    found = []
    if (root / "input").is_dir() and (root / "target").is_dir():
        found.append("mprnet")
    if (root / "rainy_image").is_dir() and (root / "ground_truth").is_dir():
        found.append("rain1400")
    rainy_prenet, clean_prenet = _prenet_locations(root)
    rainy_dir, rainy_files = _rain100_rainy_files(root)
    if rainy_dir is not None and (root / "norain").is_dir():
        # rain/ + norain/ is rain100 unless the rainy files carry PReNet's rain-N names.
        n_prenet = sum(1 for p in rainy_files if _PRENET_RAINY.match(p.name))
        found.append("prenet" if rainy_files and n_prenet * 2 > len(rainy_files) else "rain100")
    elif rainy_prenet and clean_prenet:
        found.append("prenet")
    elif not found and _images_in(root):
        files = _images_in(root)
        found.append("side_by_side" if _looks_side_by_side(files) else "unpaired")
    return found


def detect_layout(root: PathLike) -> str:
    """Name the layout of a data folder (one of `LAYOUTS`), or raise DatasetError saying what was looked for."""
    root = _check_root(root)
    found = _candidates(root)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DatasetError(
            f"{root}: matches more than one layout ({', '.join(found)}); pass layout=... to choose one")
    hint = ""
    names = {p.name for p in _subdirs(root)}
    if names & {"rain", "rainy"} and "norain" not in names:
        hint = (" It has a rainy folder but no clean norain/ folder: add the clean images, or pass "
                "layout='unpaired' to use the rainy images alone.")
    elif "norain" in names:
        hint = " It has a norain/ folder but no rain/ or rainy/ folder with the rainy images."
    elif not _images_in(root):
        usable = [d for d in _subdirs(root)[:_MAX_LISTED] if _candidates(d)]
        if usable:
            subs = ", ".join(str(d) for d in usable)
            hint = f" Its subfolders hold data sets: point at one of {subs}."
    raise DatasetError(
        f"{root}: no known data layout found. Looked for: rain/ (or rainy/) + norain/ (rain100); "
        f"rain-N + norain-N files (prenet); input/ + target/ (mprnet); rainy_image/ + ground_truth/ "
        f"(rain1400); image files in the folder itself (side_by_side or unpaired). "
        f"It holds {_folder_summary(root)}.{hint}")


def discover_pairs(root: PathLike, layout: str = "auto", clean_side: str = "left") -> list[Pair]:
    """Every (rainy, clean) pair under `root`, in natural order of their ids.

    `layout` is "auto" (see `detect_layout`) or one of `LAYOUTS`; `clean_side` ("left" or "right")
    is used by the side_by_side layout only. Raises DatasetError when the folder is missing or
    empty, when files have no partner (they are listed), or when the layout does not fit.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected 'auto' or one of: {', '.join(LAYOUTS)}")
    if clean_side not in CLEAN_SIDES:
        raise DatasetError(f"clean_side must be 'left' or 'right', got {clean_side!r}")
    root = _check_root(root)
    forced = layout != "auto"
    if not forced:
        layout = detect_layout(root)
    try:
        pairs = _DISCOVER[layout](root, clean_side=clean_side, forced=forced)
    except DatasetError as exc:
        if forced:
            guess = _candidates(root) if root.is_dir() else []
            if guess and guess != [layout]:
                raise DatasetError(f"{exc}\n  (layout {layout!r} was requested; the folder looks like "
                                   f"{' or '.join(repr(g) for g in guess)})") from None
        raise
    return sorted(pairs, key=lambda p: natural_key(p.id))


# --------------------------------------------------------------------------------------------------
# loading

def load_pair(pair: Pair) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(rainy, clean) as H×W×3 float32 RGB in [0, 1]; clean is None for unpaired data.

    Raises DatasetError naming both files and both sizes when they differ, and for side-by-side files
    of odd width; ImageReadError when a file cannot be read.
    """
    if pair.is_side_by_side:
        img = read_image(pair.rainy)
        half = _side_by_side_half_width(pair.rainy, img.shape[1])
        left, right = img[:, :half], img[:, half:2 * half]
        clean, rainy = (left, right) if pair.clean_side == "left" else (right, left)
        return np.ascontiguousarray(rainy), np.ascontiguousarray(clean)
    rainy = read_image(pair.rainy)
    if pair.clean is None:
        return rainy, None
    clean = read_image(pair.clean)
    if rainy.shape != clean.shape:
        raise DatasetError(
            f"pair {pair.id!r}: sizes differ: rainy {pair.rainy} is {rainy.shape[1]}×{rainy.shape[0]} (W×H) but "
            f"clean {pair.clean} is {clean.shape[1]}×{clean.shape[0]}")
    return rainy, clean
