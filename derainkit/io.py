"""Image input/output at the kit's boundary: RGB, float32 in [0, 1], H×W×3.

Reading accepts PNG, JPEG, TIFF and BMP (anything OpenCV decodes), 8- or 16-bit, grayscale,
RGB or RGBA, and honours the EXIF orientation tag, so a phone photo comes out the way it is
displayed. Channel order is RGB everywhere in the kit (OpenCV decodes BGR; we convert once,
here). Writing is lossless: PNG (or TIFF) at 8 or 16 bits.

Why OpenCV for pixels and Pillow for EXIF: Pillow cannot decode or encode 16-bit RGB, while
OpenCV's `IMREAD_UNCHANGED` keeps depth and alpha but ignores orientation; reading the tag
with Pillow (without decoding pixels) and applying it ourselves gives both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from derainkit.errors import ImageReadError
from derainkit.fsutil import atomic_write_bytes

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Images are refused before decoding when their header declares more pixels than this: a few kB of PNG
# can declare 30000² pixels (tens of GB once decoded). 250 MP covers the largest phone and medium-format
# photos (they tile); raise it with $DERAINKIT_MAX_PIXELS or `derainkit derain --max-pixels`.
DEFAULT_MAX_PIXELS = 250_000_000
MAX_PIXELS_ENV = "DERAINKIT_MAX_PIXELS"
LOSSLESS_EXTENSIONS = (".png", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """Pixels plus what is needed to write a result back "in kind"."""

    pixels: np.ndarray  # H×W×3 float32 RGB in [0, 1]
    bit_depth: int  # 8 or 16: the depth of the file's samples
    orientation: int  # the EXIF orientation tag that was applied (1 = none)
    had_alpha: bool  # an alpha channel was present and has been dropped
    path: Path


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def max_pixels() -> int:
    """The pixel limit in force: $DERAINKIT_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(f"${MAX_PIXELS_ENV}={text!r} must be a positive number of pixels, e.g. 400000000")
    return value


def header_size(path: PathLike) -> tuple[int, int] | None:
    """(height, width) as stored, read from the file's header without decoding its pixels; None when
    Pillow cannot parse the header (the decoder then checks the size itself)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the kit's own limit applies (check_pixels), not Pillow's warning level
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return int(height), int(width)


def check_pixels(path: PathLike, height: int, width: int) -> None:
    """ImageReadError naming the file when height × width exceeds the pixel limit (or is empty)."""
    limit = max_pixels()
    if height < 1 or width < 1:
        raise ImageReadError(f"{path}: declares an empty image ({width}×{height})")
    if height * width > limit:
        raise ImageReadError(f"{path}: declares {width}×{height} = {height * width / 1e6:.0f} MP, above the limit of "
                             f"{limit / 1e6:.0f} MP; if the image is real, raise the limit with "
                             f"{MAX_PIXELS_ENV}=<pixels> or --max-pixels")


def _exif_orientation(path: Path) -> int:
    try:
        with Image.open(path) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1  # formats Pillow cannot parse carry no EXIF we could honour
    return int(value) if value in range(1, 9) else 1


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    # EXIF orientation values 1..8: how to turn the stored pixels into the displayed image.
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.transpose(1, 0, 2)
    elif orientation == 6:
        arr = np.rot90(arr, k=-1)
    elif orientation == 7:
        arr = arr.transpose(1, 0, 2)[::-1, ::-1]  # transverse
    elif orientation == 8:
        arr = np.rot90(arr, k=1)
    return np.ascontiguousarray(arr)


def load_image(path: PathLike) -> LoadedImage:
    """Read an image file as RGB float32 in [0, 1], with its bit depth and orientation.

    Raises ImageReadError naming the file when it is missing, empty, not an image, corrupt or of
    an unsupported sample type.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    size = header_size(path)
    if size is not None:
        check_pixels(path, *size)  # before decoding: an absurd header costs nothing
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageReadError(
            f"{path}: not a readable image (corrupt or unsupported format; expected one of "
            f"{', '.join(IMAGE_EXTENSIONS)})")
    check_pixels(path, arr.shape[0], arr.shape[1])
    if arr.dtype == np.uint8:
        depth, scale = 8, 255.0
    elif arr.dtype == np.uint16:
        depth, scale = 16, 65535.0
    elif arr.dtype in (np.float32, np.float64):
        depth, scale = 32, 1.0
    else:
        raise ImageReadError(f"{path}: unsupported sample type {arr.dtype} (expected 8- or 16-bit)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    had_alpha = channels in (2, 4)
    if channels in (1, 2):  # gray or gray+alpha -> RGB
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels in (3, 4):
        rgb = arr[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    else:
        raise ImageReadError(f"{path}: unsupported channel count {channels} (expected 1, 2, 3 or 4)")
    pixels = rgb.astype(np.float32) / np.float32(scale)
    if depth == 32:
        pixels = np.clip(pixels, 0.0, 1.0)
    orientation = _exif_orientation(path) if path.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".png") else 1
    pixels = _apply_orientation(pixels, orientation)
    return LoadedImage(pixels=pixels, bit_depth=16 if depth == 16 else 8, orientation=orientation,
                       had_alpha=had_alpha, path=path)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an H×W×3 RGB float32 array in [0, 1] (see `load_image`)."""
    return load_image(path).pixels


def to_uint(pixels: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Quantise [0, 1] floats to uint8/uint16 by clipping and rounding to the nearest level."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.round(np.clip(pixels, 0.0, 1.0) * top).astype(dtype)


def write_image(path: PathLike, pixels: np.ndarray, bit_depth: int = 8) -> Path:
    """Write an H×W×3 (or H×W) RGB float image in [0, 1] losslessly (PNG or TIFF).

    Values are clipped to [0, 1] and rounded to the nearest 8- or 16-bit level. The file is
    written to a temporary name first and renamed, so an interrupted write never leaves a
    truncated image behind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOSSLESS_EXTENSIONS:
        raise ImageReadError(f"{path}: results are written losslessly; use one of {', '.join(LOSSLESS_EXTENSIONS)}")
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif arr.ndim != 2:
        raise ValueError(f"expected H×W×3 or H×W pixels, got shape {arr.shape}")
    q = to_uint(arr, bit_depth)
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(q))
    if not ok:
        raise OSError(f"{path}: encoding failed")
    return atomic_write_bytes(path, buf.tobytes())


def image_to_tensor(pixels: np.ndarray):
    """H×W×3 float array -> 1×3×H×W torch tensor (no copy of semantics, RGB kept)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def tensor_to_image(t) -> np.ndarray:
    """1×3×H×W (or 3×H×W) tensor -> H×W×3 float32 numpy array (no clipping)."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got {t.shape[0]}")
        t = t[0]
    return t.detach().float().cpu().permute(1, 2, 0).numpy()
