"""Pair discovery: every layout detected and paired on tiny generated folders, overrides, bad input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from derainkit.data import LAYOUTS, detect_layout, discover_pairs, image_size, load_pair, natural_key
from derainkit.errors import DatasetError, ImageReadError


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random "photo" (uint8 RGB): blurred noise, so halves of different scenes do not correlate."""
    rng = np.random.default_rng(seed)
    x = rng.random((h, w, 3)).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), 3)
    x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    return (x * 255).astype(np.uint8)


def _rainy(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    streaks = (rng.random(clean.shape[:2]) < 0.02).astype(np.float32) * 120
    streaks = cv2.filter2D(streaks, -1, np.ones((7, 1), np.float32) / 7)
    return np.clip(clean.astype(np.float32) + streaks[:, :, None], 0, 255).astype(np.uint8)


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def _pairs_folder(root: Path, rainy_rel: str, clean_rel: str, ids, h=12, w=16) -> Path:
    """Write clean/rainy images at root/<rainy_rel % id>, root/<clean_rel % id>."""
    for k, i in enumerate(ids):
        clean = _scene(h, w, k)
        _write(root / (clean_rel % i), clean)
        _write(root / (rainy_rel % i), _rainy(clean, k))
    return root


# ------------------------------------------------------------------------------------------------
# each layout, detected and paired

def test_rain100_detected_and_naturally_sorted(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/norain-%d.png", "norain/norain-%d.png", [10, 2, 1, 100])
    assert detect_layout(root) == "rain100"
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["norain-1", "norain-2", "norain-10", "norain-100"]
    p = pairs[1]
    assert p.rainy == root / "rain" / "norain-2.png" and p.clean == root / "norain" / "norain-2.png"
    assert p.layout == "rain100" and p.root == root and not p.is_side_by_side and p.has_clean
    rainy, clean = load_pair(p)
    assert rainy.shape == clean.shape == (12, 16, 3) and rainy.dtype == np.float32
    assert (rainy >= clean - 1e-6).all()  # the rain was added to the right image


def test_rain100_accepts_rainy_folder_and_mixed_extensions(tmp_path):
    root = tmp_path / "d"
    for i in (1, 2):
        clean = _scene(10, 10, i)
        _write(root / "norain" / f"x{i}.png", clean)
        _write(root / "rainy" / f"x{i}.jpg", _rainy(clean, i))
    pairs = discover_pairs(root)
    assert [(p.id, p.rainy.name, p.clean.name) for p in pairs] == [("x1", "x1.jpg", "x1.png"), ("x2", "x2.jpg", "x2.png")]
    assert pairs[0].layout == "rain100"


def test_rain100_jorder_x2_subfolder(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/X2/norain-%dx2.png", "norain/norain-%d.png", [1, 2, 3])
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["norain-1", "norain-2", "norain-3"]
    assert pairs[0].rainy == root / "rain" / "X2" / "norain-1x2.png"


@pytest.mark.parametrize("rainy_rel,clean_rel", [
    ("rainy/rain-%d.png", "norain-%d.png"),          # PReNet's Rain100L/H test folders
    ("rain-%d.png", "norain-%d.png"),                # PReNet's RainTrainL/H: both in one folder
    ("rainy/rain-%d.png", "norain/norain-%d.png"),   # rainy/ + norain/, told from rain100 by the names
])
def test_prenet_layouts(tmp_path, rainy_rel, clean_rel):
    root = _pairs_folder(tmp_path / "d", rainy_rel, clean_rel, [1, 10, 2])
    assert detect_layout(root) == "prenet"
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["norain-1", "norain-2", "norain-10"]
    assert pairs[2].rainy == root / (rainy_rel % 10) and pairs[2].clean == root / (clean_rel % 10)
    load_pair(pairs[0])


def test_mprnet_layout(tmp_path):
    root = _pairs_folder(tmp_path / "d", "input/%d.png", "target/%d.png", [3, 1, 2])
    assert detect_layout(root) == "mprnet"
    assert [p.id for p in discover_pairs(root)] == ["1", "2", "3"]


def test_rain1400_layout_each_rainy_image_is_a_pair(tmp_path):
    root = tmp_path / "d"
    for k in (9, 10):
        clean = _scene(8, 12, k)
        _write(root / "ground_truth" / f"{k}.jpg", clean)
        for i in (1, 2, 14):
            _write(root / "rainy_image" / f"{k}_{i}.jpg", _rainy(clean, 100 * k + i))
    assert detect_layout(root) == "rain1400"
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["9_1", "9_2", "9_14", "10_1", "10_2", "10_14"]
    assert {p.clean.name for p in pairs[:3]} == {"9.jpg"} and pairs[3].clean.name == "10.jpg"


def _side_by_side_folder(root: Path, n=3, h=48, w=48, clean_side="left") -> Path:
    for k in range(n):
        clean = _scene(h, w, k)
        rainy = _rainy(clean, k)
        halves = (clean, rainy) if clean_side == "left" else (rainy, clean)
        _write(root / f"{k + 1}.png", np.concatenate(halves, axis=1))
    return root


def test_side_by_side_detected_and_split(tmp_path):
    root = _side_by_side_folder(tmp_path / "d")
    assert detect_layout(root) == "side_by_side"
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["1", "2", "3"]
    p = pairs[0]
    assert p.is_side_by_side and p.clean_side == "left" and p.rainy == p.clean == root / "1.png"
    rainy, clean = load_pair(p)
    whole = cv2.imread(str(root / "1.png"))[:, :, ::-1].astype(np.float32) / 255
    np.testing.assert_array_equal(clean, whole[:, :48])
    np.testing.assert_array_equal(rainy, whole[:, 48:])


def test_side_by_side_clean_on_the_right(tmp_path):
    root = _side_by_side_folder(tmp_path / "d", clean_side="right")
    pairs = discover_pairs(root, layout="side_by_side", clean_side="right")
    rainy, clean = load_pair(pairs[0])
    whole = cv2.imread(str(root / "1.png"))[:, :, ::-1].astype(np.float32) / 255
    np.testing.assert_array_equal(clean, whole[:, 48:])
    assert (rainy >= clean - 1e-6).all()


def test_unpaired_folder_of_photos(tmp_path):
    root = tmp_path / "real"
    for k in (1, 2, 10):
        _write(root / f"Eg{k}.JPG", _scene(40, 80, k))  # 2:1 photos: not side-by-side pairs
    assert detect_layout(root) == "unpaired"
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == ["Eg1", "Eg2", "Eg10"]
    assert all(p.clean is None and not p.has_clean for p in pairs)
    rainy, clean = load_pair(pairs[0])
    assert clean is None and rainy.shape == (40, 80, 3)


def test_unpaired_forced_on_a_rainy_subfolder(tmp_path):
    root = tmp_path / "d"
    _write(root / "rainy" / "a.png", _scene(8, 8, 0))
    with pytest.raises(DatasetError, match="layout='unpaired'"):  # auto refuses: the clean folder is missing
        discover_pairs(root)
    pairs = discover_pairs(root, layout="unpaired")
    assert [(p.id, p.rainy) for p in pairs] == [("a", root / "rainy" / "a.png")]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1, 2])
    (root / "rain" / ".DS_Store").write_bytes(b"junk")
    (root / "norain" / "Thumbs.db").write_bytes(b"junk")
    (root / "rain" / "._1.png").write_bytes(b"mac resource fork")
    (root / "README.txt").write_text("notes")
    assert [p.id for p in discover_pairs(root)] == ["1", "2"]


def test_natural_key_orders_numbers_by_value():
    names = ["norain-10", "norain-2", "norain-1", "10_1", "9_14", "9_2"]
    assert sorted(names, key=natural_key) == ["9_2", "9_14", "10_1", "norain-1", "norain-2", "norain-10"]


def test_image_size_reads_header_and_honours_orientation(tmp_path):
    from PIL import Image

    path = tmp_path / "o.jpg"
    im = Image.fromarray(_scene(10, 30, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(path, exif=exif)
    assert image_size(path) == (30, 10)
    assert image_size(_write(tmp_path / "p.png", _scene(7, 5, 0))) == (7, 5)


# ------------------------------------------------------------------------------------------------
# overrides

def test_override_chooses_among_ambiguous_layouts(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1, 2])
    _pairs_folder(root, "input/%d.png", "target/%d.png", [1, 2, 3])
    with pytest.raises(DatasetError, match=r"more than one layout \(mprnet, rain100\)"):
        discover_pairs(root)
    assert len(discover_pairs(root, layout="rain100")) == 2
    assert len(discover_pairs(root, layout="mprnet")) == 3


@pytest.mark.parametrize("forced", ["mprnet", "rain1400", "prenet", "side_by_side"])
def test_override_that_does_not_fit_says_so(tmp_path, forced):
    root = _pairs_folder(tmp_path / "d", "rain/norain-%d.png", "norain/norain-%d.png", [1, 2])
    with pytest.raises(DatasetError) as err:
        discover_pairs(root, layout=forced)
    msg = str(err.value)
    assert str(root) in msg and f"'{forced}'" in msg and "'rain100'" in msg  # what was asked, what it looks like


def test_unknown_layout_and_side_are_rejected(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1])
    with pytest.raises(DatasetError, match="unknown layout 'jorder'.*rain100, prenet"):
        discover_pairs(root, layout="jorder")
    with pytest.raises(DatasetError, match="clean_side must be 'left' or 'right'"):
        discover_pairs(root, clean_side="top")
    assert set(LAYOUTS) == {"rain100", "prenet", "mprnet", "side_by_side", "rain1400", "unpaired"}


# ------------------------------------------------------------------------------------------------
# bad input: each error names the offending paths and says what is wrong

def test_missing_data_folder(tmp_path):
    with pytest.raises(DatasetError, match="data folder not found") as err:
        discover_pairs(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    f = _write(tmp_path / "a.png", _scene(4, 4, 0))
    with pytest.raises(DatasetError, match="expected a data folder, got a file"):
        discover_pairs(f)


def test_empty_folder_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        detect_layout(tmp_path / "empty")
    msg = str(err.value)
    for looked_for in ("rain/", "norain/", "input/", "target/", "rainy_image/", "ground_truth/", "rain-N"):
        assert looked_for in msg
    assert "0 image file(s)" in msg and "notes.txt" in msg


def test_parent_of_splits_points_at_them(tmp_path):
    _pairs_folder(tmp_path / "set" / "train", "rain/%d.png", "norain/%d.png", [1])
    _pairs_folder(tmp_path / "set" / "test", "rain/%d.png", "norain/%d.png", [1])
    with pytest.raises(DatasetError, match="point at one of") as err:
        discover_pairs(tmp_path / "set")
    assert str(tmp_path / "set" / "test") in str(err.value)


def test_empty_rain_folders(tmp_path):
    root = tmp_path / "d"
    (root / "rain").mkdir(parents=True)
    (root / "norain").mkdir()
    with pytest.raises(DatasetError, match="no rainy images") as err:
        discover_pairs(root)
    assert str(root / "rain") in str(err.value)


def test_rainy_folder_without_clean_folder(tmp_path):
    root = tmp_path / "d"
    _write(root / "rain" / "a.png", _scene(4, 4, 0))
    with pytest.raises(DatasetError, match="no clean norain/ folder") as err:
        discover_pairs(root)
    assert str(root) in str(err.value) and "rain/" in str(err.value)


def test_unmatched_files_are_listed_both_ways(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/norain-%d.png", "norain/norain-%d.png", [1, 2])
    _write(root / "rain" / "norain-7.png", _scene(12, 16, 0))
    _write(root / "norain" / "norain-8.png", _scene(12, 16, 0))
    _write(root / "norain" / "norain-9.png", _scene(12, 16, 0))
    with pytest.raises(DatasetError) as err:
        discover_pairs(root)
    msg = str(err.value)
    assert "1 rainy file(s) have no clean partner: rain/norain-7.png" in msg
    assert "2 clean file(s) have no rainy partner: norain/norain-8.png, norain/norain-9.png" in msg


def test_many_unmatched_files_are_counted(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1])
    for i in range(2, 16):
        _write(root / "rain" / f"{i}.png", _scene(4, 4, 0))
    with pytest.raises(DatasetError) as err:
        discover_pairs(root)
    msg = str(err.value)
    assert "14 rainy file(s) have no clean partner" in msg and "rain/11.png" in msg
    assert "rain/12.png" not in msg and "... and 4 more" in msg


def test_prenet_unmatched(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rainy/rain-%d.png", "norain-%d.png", [1, 2])
    _write(root / "rainy" / "rain-3.png", _scene(12, 16, 0))
    with pytest.raises(DatasetError, match=r"rainy/rain-3\.png"):
        discover_pairs(root)


def test_rain1400_unmatched_and_bad_names(tmp_path):
    root = tmp_path / "d"
    _write(root / "ground_truth" / "1.jpg", _scene(8, 8, 0))
    _write(root / "ground_truth" / "2.jpg", _scene(8, 8, 0))
    _write(root / "rainy_image" / "1_1.jpg", _scene(8, 8, 1))
    _write(root / "rainy_image" / "3_1.jpg", _scene(8, 8, 1))
    with pytest.raises(DatasetError) as err:
        discover_pairs(root)
    msg = str(err.value)
    assert "rainy_image/3_1.jpg" in msg and "ground_truth/2.jpg" in msg
    _write(root / "rainy_image" / "rainy.jpg", _scene(8, 8, 1))
    with pytest.raises(DatasetError, match=r"K_i.*rainy_image/rainy\.jpg"):
        discover_pairs(root, layout="rain1400")


def test_two_files_with_one_name(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1])
    _write(root / "norain" / "1.jpg", _scene(12, 16, 0))
    with pytest.raises(DatasetError, match=r"share the name '1': norain/1\.(jpg|png) and norain/1\.(jpg|png)"):
        discover_pairs(root)


def test_mismatched_pair_sizes_name_both_files_and_sizes(tmp_path):
    root = tmp_path / "d"
    _write(root / "rain" / "a.png", _scene(10, 20, 0))
    _write(root / "norain" / "a.png", _scene(11, 20, 0))
    (pair,) = discover_pairs(root)
    with pytest.raises(DatasetError) as err:
        load_pair(pair)
    msg = str(err.value)
    assert str(root / "rain" / "a.png") in msg and str(root / "norain" / "a.png") in msg
    assert "20×10" in msg and "20×11" in msg


def test_side_by_side_odd_width(tmp_path):
    root = tmp_path / "d"
    _write(root / "ok.png", np.zeros((8, 16, 3), np.uint8))
    _write(root / "odd.png", np.zeros((8, 17, 3), np.uint8))
    with pytest.raises(DatasetError) as err:
        discover_pairs(root, layout="side_by_side")
    msg = str(err.value)
    assert str(root / "odd.png") in msg and "odd width 17" in msg and "8 and 9 columns" in msg
    # load_pair checks too (a pair built by hand, or a file replaced after discovery)
    from derainkit.data import Pair

    pair = Pair(id="odd", rainy=root / "odd.png", clean=root / "odd.png", layout="side_by_side", root=root,
                clean_side="left")
    with pytest.raises(DatasetError, match="odd width 17"):
        load_pair(pair)
    _write(root / "odd.png", np.zeros((8, 1, 3), np.uint8))
    with pytest.raises(DatasetError, match="invalid width 1"):
        discover_pairs(root, layout="side_by_side")


def test_corrupt_image_names_the_file(tmp_path):
    root = _pairs_folder(tmp_path / "d", "rain/%d.png", "norain/%d.png", [1])
    (root / "norain" / "1.png").write_bytes(b"not a png")
    (pair,) = discover_pairs(root)
    with pytest.raises(ImageReadError, match=str(root / "norain" / "1.png")):
        load_pair(pair)


# ------------------------------------------------------------------------------------------------
# the real data in ../shared

def test_shared_rain100l_test_is_rain100(shared):
    root = shared("data", "rain100l", "test")
    assert detect_layout(root) == "rain100"
    pairs = discover_pairs(root)
    assert len(pairs) == 100
    assert [p.id for p in pairs[:3]] == ["norain-1", "norain-2", "norain-3"] and pairs[-1].id == "norain-100"
    rainy, clean = load_pair(pairs[0])
    assert rainy.shape == clean.shape == (321, 481, 3)


def test_shared_rain100l_train_has_200_pairs(shared):
    assert len(discover_pairs(shared("data", "rain100l", "train"))) == 200


def test_shared_nlcl_real_photos_are_unpaired(shared):
    root = shared("data", "nlcl_realrain", "rainy")
    assert detect_layout(root) == "unpaired"  # 1024×512 photos, yet not side-by-side pairs
    pairs = discover_pairs(root)
    assert [p.id for p in pairs] == [f"Eg{i}" for i in range(1, 8)]
    assert all(p.clean is None for p in pairs)


def test_shared_rain100l_as_side_by_side_is_detected(shared, tmp_path):
    src = shared("data", "rain100l", "test")
    for n in (1, 2, 3):
        clean = cv2.imread(str(src / "norain" / f"norain-{n}.png"))
        rainy = cv2.imread(str(src / "rain" / f"norain-{n}.png"))
        cv2.imwrite(str(tmp_path / f"{n}.png"), np.concatenate([clean, rainy], axis=1))
    assert detect_layout(tmp_path) == "side_by_side"
    r, c = load_pair(discover_pairs(tmp_path)[0])
    assert r.shape == c.shape == (321, 481, 3)
