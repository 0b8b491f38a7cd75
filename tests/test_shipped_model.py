"""The MSGNN checkpoint the kit ships: loads without pickle or arguments, derains real photos on CPU."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from derainkit.cli import main
from derainkit.errors import CheckpointError
from derainkit.io import load_image
from derainkit.models import build_model, get_model_spec
from derainkit.train.checkpoint import read_exported

SPEC = get_model_spec("msgnn")
pytestmark = pytest.mark.skipif(SPEC.default_weights is None, reason="no shipped MSGNN checkpoint in this tree")


def test_shipped_checkpoint_is_small_safe_and_self_describing():
    path = SPEC.default_weights
    assert path.suffix == ".safetensors" and path.stat().st_size < 10 * 2**20
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip pickle
    state, meta = read_exported(path)
    assert meta["model"] == "msgnn"
    for key in ("model_config", "config_hash", "iterations", "commit", "run_config"):
        assert key in meta, key
    model = build_model("msgnn")  # no weights argument: the shipped file, its own config
    own = model.state_dict()
    assert set(state) <= set(own)
    assert all(torch.equal(state[k], own[k]) for k in state)


def test_shipped_weights_refuse_another_config():
    with pytest.raises(CheckpointError):
        build_model("msgnn", {"n_subnets": 3, "m_blocks": 2})


def test_derain_real_photos_on_cpu(tmp_path, shared):
    # two of the seven real photos (all 1024x512) exercise the folder CLI end to end on real rain; the other
    # five would only add CI minutes
    source = shared("data", "nlcl_realrain", "rainy")
    names = sorted(p.name for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:2]
    assert len(names) == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        shutil.copyfile(source / name, photos / name)
    out = tmp_path / "out"
    assert main(["derain", str(photos), str(out), "--model", "msgnn", "--device", "cpu"]) == 0
    log = json.loads((out / "derain_log.json").read_text())
    assert log["weights"] == str(SPEC.default_weights)
    assert [r["input"].split("/")[-1] for r in log["images"]] == names
    for name in names:
        src = load_image(photos / name).pixels
        res = load_image(out / (name.rsplit(".", 1)[0] + ".png")).pixels
        assert res.shape == src.shape and np.isfinite(res).all()
        change = float(np.abs(res - src).mean())
        # it does something, and it is still the same photo
        assert 1e-3 < change < 0.1, (name, change)
