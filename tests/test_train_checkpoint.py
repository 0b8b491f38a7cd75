"""Checkpoints: atomic writes, weights_only loading, RNG state, run checks; safetensors export."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from derainkit.errors import CheckpointError
from derainkit.models.prenet import PReNet, PReNetConfig, load_prenet_weights
from derainkit.train import checkpoint as ck
from derainkit.train.config import RunConfig
from derainkit.train.loop import make_optimizer, make_scheduler

TINY = {"stages": 2, "channels": 8, "res_blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(seed: int = 0, iteration: int = 3, cfg: RunConfig | None = None) -> dict:
    torch.manual_seed(seed)
    cfg = cfg or RunConfig(model="prenet", model_config=TINY, iterations=10)
    model = PReNet(PReNetConfig(**TINY))
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, 10)
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    opt.step()
    sched.step()
    return ck.make_checkpoint(modules={"model": model}, optimizers={"model": opt}, schedulers={"model": sched},
                              iteration=iteration, total_iterations=10, model_name=cfg.model, config=cfg.to_dict(),
                              config_hash=cfg.config_hash(), extra={"loss_sum": 1.5, "loss_n": 2})


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name)


def test_save_and_load_with_weights_only(tmp_path):
    state = _state()
    path = ck.save_checkpoint(tmp_path / "checkpoints", state, 3, keep_iteration=True)
    assert path.name == "latest.pt" and (tmp_path / "checkpoints" / "iter_3.pt").is_file()
    raw = torch.load(path, weights_only=True)  # nothing but tensors and plain values
    assert raw["iteration"] == 3 and raw["model_name"] == "prenet"
    loaded = ck.load_checkpoint(tmp_path, model_name="prenet", config_hash=state["config_hash"])  # a run folder
    for k, v in state["modules"]["model"].items():
        assert torch.equal(loaded["modules"]["model"][k], v)
    assert loaded["extra"] == {"loss_sum": 1.5, "loss_n": 2}
    assert _leftovers(tmp_path / "checkpoints") == []
    # A later save replaces latest.pt but leaves the kept iteration file alone.
    ck.save_checkpoint(tmp_path / "checkpoints", _state(seed=1, iteration=4), 4)
    assert torch.load(tmp_path / "checkpoints" / "iter_3.pt", weights_only=True)["iteration"] == 3
    assert torch.load(path, weights_only=True)["iteration"] == 4


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    ck.save_checkpoint(folder, _state(iteration=3), 3)
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a checkpoint")  # half a file, then the process "dies"
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        ck.save_checkpoint(folder, _state(seed=1, iteration=5), 5, keep_iteration=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert ck.load_checkpoint(folder / "latest.pt")["iteration"] == 3  # previous one intact
    assert sorted(p.name for p in folder.iterdir()) == ["latest.pt"]  # no temp file, no iter_5.pt


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ck.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ck.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_scheduler_state_round_trip(tmp_path):
    cfg = RunConfig(model="prenet", iterations=10)
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, 10)
    for _ in range(7):
        opt.step()
        sched.step()
    ck.atomic_torch_save({"s": ck.scheduler_state(sched)}, tmp_path / "s.pt")
    opt2 = make_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    sched2 = make_scheduler(cfg, opt2, 10)
    ck.load_scheduler_state(sched2, torch.load(tmp_path / "s.pt", weights_only=True)["s"])
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for _ in range(2):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert sched.get_last_lr() == sched2.get_last_lr()


def test_load_refuses_other_models_configs_and_files(tmp_path):
    cfg = RunConfig(model="prenet", model_config=TINY, iterations=10)
    path = ck.save_checkpoint(tmp_path / "checkpoints", _state(cfg=cfg), 3)
    with pytest.raises(CheckpointError, match="checkpoint of model 'prenet', but this run trains 'msgnn'"):
        ck.load_checkpoint(path, model_name="msgnn")
    other = cfg.with_overrides(["lr=1e-3"])
    with pytest.raises(CheckpointError, match=rf"run config {cfg.config_hash()}.*{other.config_hash()}.*differs in: lr"):
        ck.load_checkpoint(path, model_name="prenet", config_hash=other.config_hash(), config=other.to_dict())
    assert ck.load_checkpoint(path, config_hash=other.config_hash(), allow_config_change=True)["iteration"] == 3
    weights = tmp_path / "weights.pt"
    torch.save(PReNet(PReNetConfig(**TINY)).state_dict(), weights)
    with pytest.raises(CheckpointError, match="not a derainkit training checkpoint"):
        ck.load_checkpoint(weights)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read"):
        ck.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ck.load_checkpoint(tmp_path / "empty_run")


def test_safetensors_export_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PReNet(PReNetConfig(**TINY)).eval()
    meta = {"model": "prenet", "model_config": TINY, "config_hash": "abc123def456", "commit": "deadbee",
            "iterations": 10, "metric": {"msgnn-rgb": {"psnr": 30.5, "ssim": 0.9}}}
    path = ck.export_safetensors(model, tmp_path / "model.safetensors", meta)
    state, got = ck.read_exported(path)
    assert got == meta
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rebuilt, meta2 = ck.load_exported(path)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert meta2["config_hash"] == "abc123def456"
    other = load_prenet_weights(PReNet(PReNetConfig(**TINY)), path)  # the model's own loader reads it too
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    assert _leftovers(tmp_path) == []
    with pytest.raises(CheckpointError, match="not found"):
        ck.read_exported(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        ck.read_exported(bad)
