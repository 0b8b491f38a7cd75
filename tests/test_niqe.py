"""NIQE against the LIVE release's MATLAB scores (../shared/fixtures/niqe), and properties that hold without them."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from scipy import ndimage

from derainkit.errors import DerainkitError, ImageReadError, InputSizeError
from derainkit.io import read_image, write_image
from derainkit.metrics import niqe as N

PRIS_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"  # the fixture README's
VARIANTS = {"live_release_rgb2gray": "rgb2gray", "live_release_ycbcr_y_double": "y-double"}


def pink(h: int, w: int, seed: int) -> np.ndarray:
    """A natural-looking grey image in [0, 1]: random phases, a 1/f amplitude spectrum (natural scenes' law)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1.0
    x = np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f, s=(h, w))
    return (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def sharp() -> np.ndarray:
    return pink(288, 384, 0)


# ------------------------------------------------------------------ external truth: MATLAB
def _fixture_rows(shared) -> list[dict]:
    folder = shared("fixtures", "niqe")
    return [r for r in csv.DictReader((folder / "values.csv").open()) if r["variant"] in VARIANTS]


@pytest.mark.shared
def test_matches_matlab_live_release_within_readme_tolerances(shared):
    rows = _fixture_rows(shared)
    folder = shared("fixtures", "niqe")
    assert len(rows) == 10
    failures = []
    for r in rows:
        img = read_image(folder / r["image"])  # float32 RGB /255: also exercises the float -> uint8 path
        got = N.niqe(img, colour=VARIANTS[r["variant"]])
        want, tol = float(r["niqe_matlab"]), float(r["tolerance"])
        if not abs(got - want) <= tol:
            failures.append(f"{r['image']} {r['variant']}: {got:.6f} vs MATLAB {want:.6f} (tol {tol})")
    assert not failures, failures


@pytest.mark.shared
def test_strict_images_are_close_to_matlab(shared):
    """I04 and I06 are the README's strict checks; we are well inside them (I04 to 1e-6)."""
    folder = shared("fixtures", "niqe")
    want = {r["image"]: float(r["niqe_matlab"]) for r in _fixture_rows(shared) if r["variant"] == "live_release_rgb2gray"}
    assert abs(N.niqe(read_image(folder / "I04.bmp")) - want["I04.bmp"]) < 1e-6
    assert abs(N.niqe(read_image(folder / "I06.bmp")) - want["I06.bmp"]) < 0.005


@pytest.mark.shared
def test_licence_notice_is_the_one_the_fixture_readme_quotes(shared):
    readme = " ".join(shared("fixtures", "niqe", "README.md").read_text().split())
    start = readme.index("The numbers are the LIVE NIQE release's")
    quote = readme[start: readme.index("with that notice.", start) + len("with that notice.")]
    licence = " ".join((N._DATA / "NIQE_LICENSE.txt").read_text().split())
    assert quote in licence
    assert "COPYRIGHT NOTICE STARTS WITH THIS LINE" in licence and "COPYRIGHT NOTICE ENDS WITH THIS LINE" in licence


# ------------------------------------------------------------------ the shipped model
def test_shipped_pristine_parameters_are_the_live_ones():
    assert hashlib.sha256((N._DATA / "niqe_pris_params.npz").read_bytes()).hexdigest() == PRIS_SHA256
    mu, cov = N.pristine_params()
    assert mu.shape == (36,) and cov.shape == (36, 36) and np.allclose(cov, cov.T)


def test_gaussian_window_equals_the_release_window():
    with np.load(N._DATA / "niqe_pris_params.npz") as data:
        np.testing.assert_allclose(N.gaussian_window(), data["gaussian_window"], rtol=0, atol=1e-15)


# ------------------------------------------------------------------ building blocks
def test_imresize_half_uses_matlab_antialiased_bicubic_taps():
    idx, w = N._resize_taps(20, 0.5)
    # interior: the 8-tap kernel 0.5·cubic(0.5·d) at d = ±0.5, ±1.5, ±2.5, ±3.5 (exact binary fractions)
    kernel = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375])
    np.testing.assert_array_equal(w[4], np.concatenate([kernel, kernel[::-1]]))
    np.testing.assert_array_equal(idx[4], np.arange(5, 13))  # output 5 (1-based) sits at input 9.5: taps 6..13
    # first output sample: taps at 1-based -2..5, mirrored symmetrically (0 -> 1, -1 -> 2, -2 -> 3)
    np.testing.assert_array_equal(idx[0], [2, 1, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(idx[-1], [15, 16, 17, 18, 19, 19, 18, 17])
    x = np.random.default_rng(0).random((20, 30))
    out = N.imresize_matlab(x, 0.5)
    assert out.shape == (10, 15)
    cidx, cw = N._resize_taps(30, 0.5)
    np.testing.assert_allclose(out[4, 7], w[4] @ x[np.ix_(idx[4], cidx[7])] @ cw[7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(N.imresize_matlab(np.full((20, 30), 7.0), 0.5), 7.0, rtol=0, atol=1e-12)


def test_grid_search_equals_exhaustive_first_minimum():
    alpha, r, _, _ = N._alpha_grid()
    rng = np.random.default_rng(1)
    targets = np.concatenate([rng.uniform(r[0] - 0.05, r[-1] + 0.05, 2000), r[[0, 17, 5000, -1]],
                              (r[:-1:997] + r[1::997]) / 2, [np.nan]])
    brute = np.argmin((r[None, :] - np.nan_to_num(targets, nan=np.inf)[:, None]) ** 2, axis=1)
    brute[np.isnan(targets)] = 0  # MATLAB's min over all-NaN returns the first index
    np.testing.assert_array_equal(N._nearest_on_grid(targets), brute)
    assert alpha[0] == 0.2 and alpha[-1] == 10.0 and len(alpha) == 9801


def test_aggd_fit_recovers_a_gaussian_and_its_asymmetry():
    rng = np.random.default_rng(2)
    g = rng.normal(0, 1.0, (1, 200_000))
    # an AGGD with α = 2, β_l = 0.5·√2, β_r = 2·√2: the left side has probability β_l/(β_l + β_r)
    side = np.where(rng.random(g.shape) < 0.5 / 2.5, -0.5, 2.0)
    alpha, bl, br = N.aggd_fit(np.concatenate([g, side * np.abs(g)]))
    assert abs(alpha[0] - 2.0) < 0.05 and abs(bl[0] - np.sqrt(2)) < 0.02 and abs(br[0] - np.sqrt(2)) < 0.02
    assert abs(alpha[1] - 2.0) < 0.05 and abs(bl[1] - 0.5 * np.sqrt(2)) < 0.02 and abs(br[1] - 2 * np.sqrt(2)) < 0.05


# ------------------------------------------------------------------ behaviour
def test_deterministic_and_same_for_uint8_and_float(sharp):
    rgb = np.repeat(sharp[:, :, None], 3, axis=2)
    u8 = np.floor(rgb * 255 + 0.5).astype(np.uint8)
    a = N.niqe(u8)
    assert a == N.niqe(u8)
    assert a == N.niqe(u8.astype(np.float64) / 255) == N.niqe((u8 / np.float32(255)).astype(np.float32))
    assert a == N.niqe(u8[:, :, 0])  # grey input: equal channels give the same grey
    assert np.isfinite(a)


def test_blur_and_noise_score_worse_than_a_natural_image(sharp):
    rng = np.random.default_rng(3)
    clean = N.niqe(sharp)
    blurred = N.niqe(ndimage.gaussian_filter(sharp, 1.5))
    noisy = N.niqe(np.clip(sharp + rng.normal(0, 0.05, sharp.shape), 0, 1))
    assert clean + 1.0 < blurred and clean + 1.0 < noisy, (clean, blurred, noisy)


def test_crops_to_whole_blocks(sharp):
    assert N.niqe(sharp[:192, :288]) == N.niqe(sharp[:287, :383])


def test_minimum_size_and_too_small_images():
    assert np.isfinite(N.niqe(pink(96, 96, 4)))
    for shape in ((95, 200), (200, 95), (40, 40, 3)):
        with pytest.raises(InputSizeError) as err:
            N.niqe(np.zeros(shape, np.uint8))
        msg = str(err.value)
        assert "96×96" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [np.zeros((100, 100, 4)), np.zeros(100), np.zeros((2, 100, 100, 3)),
                                 np.zeros((100, 100), np.int32), np.full((100, 100), 200.0)])
def test_bad_shape_or_dtype_raise_kit_errors(bad):
    with pytest.raises(ImageReadError) as err:
        N.niqe(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_raises(value, sharp):
    img = sharp.copy()
    img[5, 5] = value
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        N.niqe(img)


def test_constant_image_has_no_score():
    assert np.isnan(N.niqe(np.full((192, 192), 128, np.uint8)))


def test_flat_eps_only_touches_floating_point_noise(sharp):
    # no exactly flat windows in this image: zeroing |MSCN| < 1e-11 changes nothing
    assert N.niqe(sharp, flat_eps=0.0) == N.niqe(sharp)


def test_folder_scores_every_image_and_names_bad_files(tmp_path, sharp):
    a, b = np.repeat(sharp[:, :, None], 3, axis=2), np.repeat(pink(192, 200, 5)[:, :, None], 3, axis=2)
    write_image(tmp_path / "a.png", a)
    write_image(tmp_path / "b.png", b)
    scores = N.niqe_folder(tmp_path)
    assert list(scores) == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert scores[str(tmp_path / "a.png")] == N.niqe(a)
    assert scores == N.niqe_folder([tmp_path / "a.png", tmp_path / "b.png"])
    write_image(tmp_path / "small.png", a[:50, :50])
    with pytest.raises(DerainkitError, match="small.png"):
        N.niqe_folder(tmp_path)
