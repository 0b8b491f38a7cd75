"""MSGNN code variant against the test vectors produced by the official code (../shared/fixtures/msgnn).

Skipped when ../shared is absent. Tolerances follow the fixtures README: output and G atol 1e-5,
neighbour indices equal as sorted sets per query except where the 6th−5th distance gap is < 1e-5.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from derainkit.errors import CheckpointError
from derainkit.models.msgnn import (
    MSGNN,
    MSGNNConfig,
    export_official_state_dict,
    load_official_state_dict,
    pyr_down,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIX = SHARED / "fixtures" / "msgnn"
BRANCHES = ("1", "2", "4", "guide")


def fixture(name: str):
    path = FIX / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is optional)")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def official_sd():
    return fixture("default_state_dict.pt")


@pytest.fixture(scope="module")
def model(official_sd):
    m = MSGNN()
    load_official_state_dict(m, official_sd)
    return m.eval()


def _check_graph(results, data, crop=None):
    for name, res in zip(BRANCHES, results):
        if crop is None:
            g, ref = res.G, data[f"G_{name}"]
        else:
            (r0, r1), (c0, c1) = crop
            g, ref = res.G[:, :, r0:r1, c0:c1], data[f"G_{name}_crop"]
        assert (g - ref).abs().max().item() <= 1e-5, f"G_{name}"
        ours = res.idx.sort(-1).values
        theirs = data[f"idx_{name}"].sort(-1).values
        mismatch = (ours != theirs).any(-1)
        fragile = data[f"gap56_{name}"] < 1e-5  # a 5th/6th-rank near-tie: either choice is correct
        assert not (mismatch & ~fragile).any(), f"idx_{name}: {int((mismatch & ~fragile).sum())} set mismatches"
        # distances of the agreeing queries (they include the code's +1e-5)
        ok = ~mismatch
        assert torch.allclose(res.dist[ok], data[f"dist_{name}"][ok], rtol=1e-5, atol=2e-6), f"dist_{name}"


def test_train_mode_64(model):
    data = fixture("train_mode_64.pt")
    with torch.no_grad():
        results = model.graph_features(data["O"], data["E"])
        out = model.backbone(data["O"], [r.G for r in results])
    _check_graph(results, data)
    assert (out - data["output"]).abs().max().item() <= 1e-5
    # the pyramid built internally equals the official one
    with torch.no_grad():
        out2 = model(data["O"], data["E"], half=data["O_2"], quarter=data["O_4"])
    assert (out2 - data["output"]).abs().max().item() <= 1e-5


def test_train_mode_64_with_autograd(model):
    """The autograd code path (torch.cat dense blocks, no chunking) gives the same output."""
    data = fixture("train_mode_64.pt")
    model.train()
    try:
        out = model(data["O"], data["E"])
    finally:
        model.eval()
    assert out.requires_grad
    assert (out.detach() - data["output"]).abs().max().item() <= 1e-5


def test_eval_mode_120x150(model):
    data = fixture("eval_mode_120x150.pt")
    crop = (data["meta"]["G_crop_rows"], data["meta"]["G_crop_cols"])
    with torch.no_grad():
        results = model.graph_features(data["O"], data["E"])
        out = model.backbone(data["O"], [r.G for r in results])
    _check_graph(results, data, crop)
    assert (out - data["output"]).abs().max().item() <= 1e-5
    assert (out - data["output_train_mode"]).abs().max().item() <= 1e-5


def test_query_chunking_does_not_change_graph_features(official_sd):
    data = fixture("eval_mode_120x150.pt")
    m = MSGNN(MSGNNConfig(query_chunk=333))
    load_official_state_dict(m, official_sd)
    with torch.no_grad():
        res = m.graph_features(data["O"], data["E"])
    (r0, r1), (c0, c1) = data["meta"]["G_crop_rows"], data["meta"]["G_crop_cols"]
    for name, r in zip(BRANCHES, res):
        assert (r.G[:, :, r0:r1, c0:c1] - data[f"G_{name}_crop"]).abs().max().item() <= 1e-5


def test_pyr_down_matches_cv2():
    data = fixture("pyrdown.pt")
    for name, item in data["images"].items():
        img = item["img"].permute(2, 0, 1)[None]
        d2 = pyr_down(img)
        d4 = pyr_down(d2)
        assert d2[0].permute(1, 2, 0).shape == item["down2"].shape, name
        assert (d2[0].permute(1, 2, 0) - item["down2"]).abs().max().item() <= 1e-6, name
        assert (d4[0].permute(1, 2, 0) - item["down4"]).abs().max().item() <= 1e-6, name


def test_seeded_build_equals_official_initialisation(official_sd):
    """Same creation order as the official __init__: torch.manual_seed(0) gives the official weights."""
    torch.manual_seed(0)
    exported = export_official_state_dict(MSGNN())
    assert list(exported) == list(official_sd)  # same keys, same order
    for key, value in official_sd.items():
        assert torch.equal(exported[key], value), key


def test_checkpoint_formats(official_sd, tmp_path):
    # DataParallel prefix, official training checkpoint wrapper, path on disk
    wrapped = {"net": {f"module.{k}": v for k, v in official_sd.items()}, "clock_net": {"epoch": 3}}
    path = tmp_path / "latest_net"
    torch.save(wrapped, path)
    m = load_official_state_dict(MSGNN(), path)
    assert torch.equal(m.head.weight, official_sd["convert_rainy.weight"])
    assert torch.equal(m.graph.branches["exemplar"].weight_net.conv_out.bias, official_sd["gcn_guide.weightnet_hr.2.0.bias"])
    # our own key names load too
    m2 = load_official_state_dict(MSGNN(), m.state_dict())
    assert torch.equal(m2.tail.conv2.weight, official_sd["out.2.weight"])


def test_checkpoint_of_another_config_is_rejected_clearly(official_sd):
    with pytest.raises(CheckpointError) as err:
        load_official_state_dict(MSGNN(MSGNNConfig(n_subnets=2)), official_sd)
    msg = str(err.value)
    assert "unexpected keys" in msg and "res_group.2." in msg and "n_subnets=4" in msg
    with pytest.raises(CheckpointError, match="variant='code'"):
        load_official_state_dict(MSGNN(MSGNNConfig(variant="paper")), official_sd)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official_state_dict(MSGNN(MSGNNConfig(exemplar=True, fusion_kernel=5)), official_sd)
    small = {k: v for k, v in official_sd.items() if not k.startswith("gcn_guide.")}
    with pytest.raises(CheckpointError, match="missing keys"):
        load_official_state_dict(MSGNN(), small)
