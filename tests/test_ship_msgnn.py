"""scripts/ship_msgnn.py: a candidate replaces the shipped MSGNN only when it scores higher on the whole test
set, with its score; snapshots of a run still going; other architectures refused."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import load_script

TINY = {"n_subnets": 2, "m_blocks": 1, "channels": 8, "window_size": 10}


ship_msgnn = load_script("ship_msgnn")


def _export(path: Path, seed: int, config: dict = TINY) -> Path:
    from derainkit.models import get_model_spec
    from derainkit.train.config import canonical_model_config
    from derainkit.weights import export_safetensors

    spec = get_model_spec("msgnn")
    canonical = canonical_model_config("msgnn", config)
    torch.manual_seed(seed)
    net = spec.build(spec.config_from_dict(canonical))
    return export_safetensors(net, path, {"model": "msgnn", "model_config": canonical, "iterations": 100 * seed})


@pytest.mark.usefixtures("one_torch_thread")
def test_only_the_better_of_two_ships_and_the_release_carries_its_score(tmp_path):
    a, b = _export(tmp_path / "a.safetensors", 1), _export(tmp_path / "b.safetensors", 2)
    outcomes = {}
    for cand, current in ((a, b), (b, a)):
        case = tmp_path / cand.stem
        case.mkdir()
        shipped = shutil.copyfile(current, case / "shipped.safetensors")
        before = shipped.read_bytes()
        report = ship_msgnn.ship(cand, "embedded:test", apply=True, shipped=shipped, summary_dir=case / "summary")
        outcomes[cand.stem] = report
        c, s = report["candidate_metrics"]["matlab-y"]["psnr"], report["shipped_metrics"]["matlab-y"]["psnr"]
        assert report["ship"] == (c > s) == report["applied"]
        history = list(csv.DictReader((case / "summary" / "history.csv").open()))
        assert len(history) == 1 and float(history[0]["candidate_psnr"]) == pytest.approx(c, abs=1e-4)
        if report["applied"]:
            assert shipped.read_bytes() == cand.read_bytes() and history[0]["decision"] == "shipped"
            summary = json.loads((case / "summary" / "summary.json").read_text())
            assert summary["metrics"]["matlab-y"]["psnr"] == pytest.approx(c)
            assert summary["weights_sha256"] == report["candidate_sha256"] and summary["n_images"] == 6
        else:
            assert shipped.read_bytes() == before and history[0]["decision"] == "kept the shipped one"
            assert not (case / "summary" / "summary.json").exists()
    # the same two scores, seen from each side: exactly one of them ships
    assert outcomes["a"]["candidate_metrics"] == outcomes["b"]["shipped_metrics"]
    assert outcomes["a"]["ship"] != outcomes["b"]["ship"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_stored_summary_of_the_shipped_file_is_reused_and_a_quick_look_never_ships(tmp_path, monkeypatch):
    a, b = _export(tmp_path / "a.safetensors", 1), _export(tmp_path / "b.safetensors", 2)
    shipped = shutil.copyfile(a, tmp_path / "shipped.safetensors")
    summary_dir = tmp_path / "summary"
    first = ship_msgnn.ship(b, "embedded:test", shipped=shipped, summary_dir=summary_dir)  # no --apply: nothing moves
    assert shipped.read_bytes() == a.read_bytes() and not (summary_dir / "summary.json").exists()
    # a summary naming the shipped file's digest is read instead of scoring it again
    ship_msgnn.evaluate_weights(shipped, "embedded:test", summary_dir)
    calls = []
    real = ship_msgnn.evaluate_weights
    monkeypatch.setattr(ship_msgnn, "evaluate_weights", lambda w, *a, **k: calls.append(Path(w)) or real(w, *a, **k))
    again = ship_msgnn.ship(b, "embedded:test", shipped=shipped, summary_dir=summary_dir)
    assert calls == [b] and again["shipped_metrics"] == first["shipped_metrics"]
    # --limit: a look at a few images, never a release, never in the history
    rows = len(list(csv.DictReader((summary_dir / "history.csv").open())))
    look = ship_msgnn.ship(b, "embedded:test", limit=2, apply=True, shipped=shipped, summary_dir=summary_dir)
    assert look["n_images"] == 2 and not look["ship"] and not look["applied"] and "never a release" in look["why"]
    assert shipped.read_bytes() == a.read_bytes()
    assert len(list(csv.DictReader((summary_dir / "history.csv").open()))) == rows


def test_another_architecture_is_refused_in_one_line(tmp_path, capsys):
    shipped_cfg = ship_msgnn.check_same_architecture(ship_msgnn.SHIPPED, ship_msgnn.SHIPPED)
    assert shipped_cfg["model"] == "msgnn"
    other = _export(tmp_path / "other.safetensors", 1)
    assert ship_msgnn.main([str(other), "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another MSGNN config" in err and "m_blocks" in err
    assert ship_msgnn.main([str(tmp_path / "missing")]) == 2
    assert "no such file or run folder" in capsys.readouterr().err


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_still_going_is_shipped_from_a_snapshot_of_its_latest_checkpoint(tmp_path):
    from derainkit.models import build_model, exported_metadata
    from derainkit.train import RunConfig, train

    cfg = RunConfig(model="msgnn", model_config=TINY, train_data="embedded:train", val_data=None, crop=32, batch=2,
                    iterations=4, val_every=0, log_every=1, checkpoint_every=1, exemplar="random", device="cpu",
                    out_dir=str(tmp_path / "runs"))
    result = train(cfg, max_iterations_this_call=2, progress=False)
    assert not result.finished and not (result.run_dir / "model.safetensors").exists()
    snap = ship_msgnn.candidate_weights(result.run_dir)
    assert snap.name == "snapshot_iter2.safetensors"
    meta = exported_metadata(snap)
    assert (meta["partial"], meta["iterations"], meta["total_iterations"]) == (True, 2, 4)
    assert meta["config_hash"] == result.config_hash
    state = torch.load(result.run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    rebuilt = build_model(weights=snap).state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in state["modules"]["model"].items())
    assert ship_msgnn.candidate_weights(result.run_dir).read_bytes() == snap.read_bytes()  # the same bytes again
    # once the run finishes, its own export is the candidate
    train(cfg, resume=True, progress=False)
    assert ship_msgnn.candidate_weights(result.run_dir) == result.run_dir / "model.safetensors"
