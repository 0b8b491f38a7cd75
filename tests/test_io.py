"""Image I/O: formats, bit depths, channel layouts, EXIF orientation, lossless writing, clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from derainkit.errors import ImageReadError
from derainkit.io import load_image, read_image, to_uint, write_image


def _rgb8(h=6, w=9, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_8bit_rgb_roundtrip_is_exact_and_rgb_ordered(tmp_path, ext):
    rgb = _rgb8()
    Image.fromarray(rgb).save(tmp_path / f"a{ext}")  # Pillow writes RGB, so order errors would show
    img = load_image(tmp_path / f"a{ext}")
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (6, 9, 3)
    assert img.bit_depth == 8
    np.testing.assert_array_equal(np.round(img.pixels * 255).astype(np.uint8), rgb)


def test_jpeg_reads_close_to_source(tmp_path):
    rgb = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    px = read_image(tmp_path / "a.jpg")
    assert np.abs(px * 255 - rgb).max() < 6
    assert px[..., 0].mean() > px[..., 2].mean() > px[..., 1].mean()  # R > B > G: channels not swapped


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_rgb_keeps_precision(tmp_path, ext):
    rgb16 = np.random.default_rng(1).integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / f"a{ext}"), rgb16[:, :, ::-1])  # cv2 takes BGR
    img = load_image(tmp_path / f"a{ext}")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(np.round(img.pixels.astype(np.float64) * 65535).astype(np.uint16), rgb16)


def test_grayscale_8_and_16_bit_become_rgb(tmp_path):
    g8 = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(g8).save(tmp_path / "g8.png")
    px = read_image(tmp_path / "g8.png")
    assert px.shape == (6, 8, 3)
    np.testing.assert_allclose(px[..., 0] * 255, g8, atol=1e-3)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    g16 = (np.arange(48, dtype=np.uint16) * 1300).reshape(6, 8)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    img = load_image(tmp_path / "g16.png")
    assert img.bit_depth == 16 and img.pixels.shape == (6, 8, 3)
    np.testing.assert_allclose(img.pixels[..., 2] * 65535, g16, atol=1e-2)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.dstack([_rgb8(), np.full((6, 9), 77, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.had_alpha and img.pixels.shape == (6, 9, 3)
    np.testing.assert_array_equal(np.round(img.pixels * 255).astype(np.uint8), rgba[..., :3])


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_honoured(tmp_path, orientation):
    # A distinctive 4x6 image; Pillow's exif_transpose is the independent reference.
    base = np.zeros((40, 60, 3), np.uint8)
    base[:10, :20] = (255, 0, 0)   # red block top-left
    base[30:, 50:] = (0, 0, 255)   # blue block bottom-right
    base[:10, 50:] = (0, 255, 0)   # green block top-right
    im = Image.fromarray(base)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.jpg", exif=exif, quality=100, subsampling=0)
    from PIL import ImageOps

    with Image.open(tmp_path / "o.jpg") as ref_im:
        ref = np.asarray(ImageOps.exif_transpose(ref_im).convert("RGB"))
    img = load_image(tmp_path / "o.jpg")
    assert img.orientation == orientation
    assert img.pixels.shape == ref.shape
    assert np.abs(img.pixels * 255 - ref).max() < 3


def test_write_is_lossless_8_and_16_bit(tmp_path):
    px = np.random.default_rng(2).random((7, 5, 3)).astype(np.float32)
    write_image(tmp_path / "a.png", px)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "a.png") * 255), to_uint(px, 8))
    write_image(tmp_path / "b.png", px, bit_depth=16)
    back = load_image(tmp_path / "b.png")
    assert back.bit_depth == 16
    np.testing.assert_allclose(back.pixels, px, atol=1 / 65535)
    write_image(tmp_path / "c.tif", px, bit_depth=16)
    np.testing.assert_allclose(read_image(tmp_path / "c.tif"), px, atol=1 / 65535)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp leftovers


def test_write_clips_out_of_range(tmp_path):
    px = np.array([[[-0.5, 0.5, 1.7]]], np.float32)
    write_image(tmp_path / "a.png", px)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "a.png") * 255), [[[0, 128, 255]]])


def test_write_refuses_lossy_format(tmp_path):
    with pytest.raises(ImageReadError, match=r"out\.jpg.*losslessly"):
        write_image(tmp_path / "out.jpg", np.zeros((2, 2, 3)))


def test_bad_files_raise_clear_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image")
    good = tmp_path / "trunc.png"
    Image.fromarray(_rgb8(64, 64)).save(good)
    (tmp_path / "half.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    with pytest.raises(ImageReadError, match=r"empty\.png: file is empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match=r"notes\.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match=r"is a folder"):
        read_image(tmp_path)
    # a truncated PNG either fails to decode (clear error) or decodes partially; never a cv2 traceback
    try:
        read_image(tmp_path / "half.png")
    except ImageReadError as exc:
        assert "half.png" in str(exc)
