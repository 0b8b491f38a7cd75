"""`evaluate` on photos without ground truth: NIQE of the prediction and of the input, through the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from derainkit.cli import main
from derainkit.io import write_image
from derainkit.metrics.niqe import niqe
from derainkit.models.prenet import PReNet, PReNetConfig
from derainkit.weights import export_safetensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unpaired_folder_is_scored_by_niqe(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    for i in range(2):
        smooth = np.kron(rng.random((13, 15, 3)), np.ones((10, 10, 1)))  # a blocky scene with texture
        write_image(photos / f"p{i}.png", np.clip(smooth + 0.05 * rng.random(smooth.shape), 0, 1))
    torch.manual_seed(0)
    weights = export_safetensors(PReNet(PReNetConfig(stages=1, channels=4, res_blocks=0)), tmp_path / "w.safetensors",
                                 {"model": "prenet", "model_config": {"stages": 1, "channels": 4, "res_blocks": 0}})
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", "prenet", "--weights", str(weights), "--data", str(photos), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["niqe"] and "no ground truth" in summary["protocols"]["niqe"]
    with open(out / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    from derainkit.io import read_image

    assert float(rows[0]["input_niqe"]) == pytest.approx(niqe(read_image(photos / "p0.png")))
    assert summary["metrics"]["niqe"]["input_niqe"] == pytest.approx(np.mean([float(r["input_niqe"]) for r in rows]))
    # a full-reference protocol on photos without ground truth is refused in one line
    assert main(["evaluate", "--data", str(photos), "--protocol", "matlab-y", "--out", str(tmp_path / "x")]) == 2
