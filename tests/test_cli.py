"""The command line end to end on small generated data, and its messages for bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derainkit.cli import main
from derainkit.io import load_image, write_image
from derainkit.models.prenet import PReNet


@pytest.fixture
def weights(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "prenet_small.pth"
    torch.save(PReNet().state_dict(), path)
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A three-pair JORDER-layout folder: rain/X.png <-> norain/X.png."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(1, 4):
        clean = rng.random((40, 56, 3)).astype(np.float32) * 0.6 + 0.2
        rainy = np.clip(clean + (rng.random((40, 56, 1)) > 0.97) * 0.5, 0, 1)
        write_image(root / "norain" / f"img-{i}.png", clean)
        write_image(root / "rain" / f"img-{i}.png", rainy)
    return root


def test_evaluate_writes_csv_summary_and_manifest(tmp_path, dataset, weights, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", "prenet", "--weights", str(weights), "--data", str(dataset),
               "--protocol", "matlab-y", "--protocol", "msgnn-rgb", "--device", "cpu", "--out", str(out),
               "--save-images"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["id"] for r in rows] == ["img-1", "img-2", "img-3"]
    assert {"matlab-y/psnr", "matlab-y/input_psnr", "msgnn-rgb/ssim"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["quantize"] == "trunc"  # PReNet's official rule
    assert summary["model"] == "prenet" and len(summary["weights_sha256"]) == 64
    assert summary["provenance"]["commit"] and summary["manifest_sha256"]
    means = summary["metrics"]["matlab-y"]
    assert means["psnr"] == pytest.approx(np.mean([float(r["matlab-y/psnr"]) for r in rows]))
    assert len(list(csv.DictReader(open(out / "manifest.csv")))) == 3
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img-1.png", "img-2.png", "img-3.png"]
    assert "| matlab-y |" in capsys.readouterr().out


def test_evaluate_without_model_scores_the_input(tmp_path, dataset):
    out = tmp_path / "inp"
    assert main(["evaluate", "--data", str(dataset), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]["matlab-y"]
    assert m["psnr"] == pytest.approx(m["input_psnr"]) and m["psnr"] < 30


def test_derain_file_folder_16bit_and_exif(tmp_path, weights):
    src = tmp_path / "photos"
    src.mkdir()
    rgb = (np.random.default_rng(1).random((30, 50, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    im.save(src / "phone.jpg", exif=exif)
    write_image(src / "deep.png", rgb / 255.0, bit_depth=16)
    out = tmp_path / "out"
    assert main(["derain", str(src), str(out), "--model", "prenet", "--weights", str(weights), "--device", "cpu"]) == 0
    phone = load_image(out / "phone.png")
    assert phone.pixels.shape == (50, 30, 3)  # EXIF rotation applied: width and height swapped
    assert load_image(out / "deep.png").bit_depth == 16  # 16-bit in, 16-bit out
    log = json.loads((out / "derain_log.json").read_text())
    assert len(log["images"]) == 2 and all("tiling" in r for r in log["images"])
    single = tmp_path / "single.png"
    assert main(["derain", str(src / "phone.jpg"), str(single), "--model", "prenet", "--weights", str(weights),
                 "--tile", "64", "--overlap", "8"]) == 0
    assert load_image(single).bit_depth == 8


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_bad_inputs_give_one_clear_line(tmp_path, dataset, weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folder is relative: keep it out of the checkout
    assert main(["evaluate", "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _err(capsys)
    assert main(["evaluate", "--model", "prenett", "--weights", str(weights), "--data", str(dataset)]) == 2
    assert "unknown model 'prenett'" in _err(capsys)
    assert main(["evaluate", "--model", "prenet", "--weights", str(tmp_path / "x.pth"), "--data", str(dataset)]) == 2
    assert "x.pth: weights file not found" in _err(capsys)
    assert not (tmp_path / "results").exists()  # refused commands create no output folder
    assert main(["evaluate", "--model", "prenet", "--data", str(dataset)]) == 2
    assert "ships no weights" in _err(capsys)
    assert main(["derain", str(tmp_path / "none.png"), str(tmp_path / "o.png"), "--model", "prenet",
                 "--weights", str(weights)]) == 2
    assert "none.png: no such file or folder" in _err(capsys)
    # a corrupt image inside the dataset
    (dataset / "rain" / "img-2.png").write_text("garbage")
    assert main(["evaluate", "--model", "prenet", "--weights", str(weights), "--data", str(dataset),
                 "--out", str(tmp_path / "e")]) == 2
    assert "img-2.png" in _err(capsys)


def test_mismatched_pair_sizes_are_named(tmp_path, dataset, capsys):
    write_image(dataset / "norain" / "img-3.png", np.zeros((41, 56, 3)))
    assert main(["evaluate", "--data", str(dataset), "--out", str(tmp_path / "e")]) == 2
    err = _err(capsys)
    assert "img-3.png" in err and "41" in err


def test_evaluate_on_the_embedded_set(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("DERAINKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "emb"
    assert main(["evaluate", "--model", "prenet", "--weights", str(weights), "--data", "embedded", "--limit", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and "embedded" in summary["data_root"]
    assert main(["evaluate", "--data", "embedded:val"]) == 2
