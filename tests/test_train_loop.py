"""The training loop on the embedded data set with tiny models: exact resume, learning, schedule,
exemplars, run folder contents and refusals."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from derainkit.errors import CheckpointError, ConfigError, DatasetError, DerainkitError
from derainkit.io import write_image
from derainkit.models import MODELS, ModelSpec
from derainkit.models.prenet import PReNetConfig
from derainkit.train import RunConfig, train
from derainkit.train.checkpoint import load_checkpoint, read_exported

TINY = {"stages": 2, "channels": 8, "res_blocks": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _embedded_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERAINKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _cfg(out: Path, **kw) -> RunConfig:
    base = dict(model="prenet", model_config=TINY, crop=32, batch=2, iterations=6, val_limit=2,
                val_protocols=["msgnn-rgb"], log_every=1, checkpoint_every=2, exemplar="none", out_dir=str(out),
                device="cpu")
    base.update(kw)
    return RunConfig.from_dict(base)


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------ a tiny exemplar model

@dataclass
class TinyExConfig:
    exemplar: bool = True

    @classmethod
    def from_dict(cls, d):
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TinyEx config key(s) {sorted(unknown)}; valid keys: ['exemplar']")
        return cls(**d)

    def to_dict(self):
        return asdict(self)


class TinyEx(nn.Module):
    """rainy + conv([rainy, exemplar]); records which exemplars it was given."""

    seen: list = []

    def __init__(self, config: TinyExConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, rainy, exemplar=None):
        if self.training:
            TinyEx.seen.append(None if exemplar is None else tuple(exemplar.shape))
        e = rainy if exemplar is None else exemplar
        return rainy + self.conv(torch.cat([rainy, e], 1))


@pytest.fixture
def tinyex(monkeypatch):
    TinyEx.seen = []
    monkeypatch.setitem(MODELS, "tinyex", ModelSpec(
        name="tinyex", description="test model with an exemplar input", config_from_dict=TinyExConfig.from_dict,
        build=TinyEx, load_weights=lambda m, p: m, official_quantize="round", infer_bytes_per_pixel=100.0,
        uses_exemplar=True))
    return TinyEx


def _msgnn_spec():
    msgnn = pytest.importorskip("derainkit.models.msgnn")
    return MODELS.get("msgnn") or ModelSpec(
        name="msgnn", description="MSGNN (test registration)", config_from_dict=msgnn.MSGNNConfig.from_dict,
        build=msgnn.MSGNN, load_weights=lambda m, p: m, official_quantize="round", infer_bytes_per_pixel=1e4,
        uses_exemplar=True)


# ------------------------------------------------------------------------------ (a) exact resume

def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "latest.pt")


@pytest.mark.parametrize("model", ["prenet", "tinyex"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, model, tinyex):
    kw = dict(iterations=8, checkpoint_every=3, log_every=3, val_every=4)
    if model == "tinyex":
        kw.update(model="tinyex", model_config={}, exemplar="random")
    whole = train(_cfg(tmp_path / "a", **kw), progress=False)
    cfg_b = _cfg(tmp_path / "b", **kw)
    assert cfg_b.config_hash() == whole.config_hash  # out_dir is not part of the run's identity
    part = train(cfg_b, progress=False, max_iterations_this_call=5)  # mid log interval, off the checkpoint grid
    assert (part.iteration, part.finished, part.weights) == (5, False, None)
    assert _final_state(part.run_dir)["iteration"] == 5
    # A crashed run may have logged past its last checkpoint: those rows are redone, not duplicated.
    with open(part.run_dir / "log.csv", "a") as fh:
        fh.write("6,0.1,0.0005,123.0,,,9.9\n")
    resumed = train(cfg_b, resume=True, progress=False)
    assert resumed.finished and resumed.iteration == 8

    a, b = _final_state(whole.run_dir), _final_state(resumed.run_dir)
    assert a["modules"]["model"].keys() == b["modules"]["model"].keys()
    assert all(torch.equal(a["modules"]["model"][k], b["modules"]["model"][k]) for k in a["modules"]["model"])
    sa, sb = a["optimizers"]["model"]["state"], b["optimizers"]["model"]["state"]
    assert sa.keys() == sb.keys()
    for p in sa:
        for k in sa[p]:
            assert torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k])), (p, k)
    assert a["schedulers"] == b["schedulers"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    wa, _ = read_exported(whole.weights)
    wb, _ = read_exported(resumed.weights)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_log(whole.run_dir)) == drop(_log(resumed.run_dir))
    assert [int(r["iteration"]) for r in _log(resumed.run_dir)] == [3, 4, 6, 8]
    assert resumed.metrics == whole.metrics
    starts = json.loads((resumed.run_dir / "provenance.json").read_text())["starts"]
    assert [s["start_iteration"] for s in starts] == [0, 5]


def test_workers_do_not_change_the_run(tmp_path):
    a = train(_cfg(tmp_path / "a", iterations=3, val_data=None), progress=False)
    b = train(_cfg(tmp_path / "b", iterations=3, val_data=None, num_workers=2), progress=False)
    wa, _ = read_exported(a.weights)
    wb, _ = read_exported(b.weights)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------ (b) it learns

def test_short_run_beats_the_rainy_input(tmp_path):
    cfg = _cfg(tmp_path, iterations=60, crop=48, batch=4, lr=2e-3, val_limit=3, log_every=20, checkpoint_every=0,
               val_protocols=["msgnn-rgb", "matlab-y"])
    r = train(cfg, progress=False)
    for proto in ("msgnn-rgb", "matlab-y"):
        assert r.metrics[proto]["psnr"] > r.input_metrics[proto]["psnr"] + 1.0, (proto, r.metrics, r.input_metrics)
    losses = [float(row["train_loss"]) for row in _log(r.run_dir)]
    assert losses[-1] < losses[0]  # -SSIM goes down


# ------------------------------------------------------------------------------ (c) schedule

def test_lr_drops_at_60_and_80_percent(tmp_path):
    r = train(_cfg(tmp_path, iterations=10, val_data=None, checkpoint_every=0), progress=False)
    lrs = [float(row["lr"]) for row in _log(r.run_dir)]
    assert lrs == pytest.approx([5e-4] * 6 + [5e-5] * 2 + [5e-6] * 2)
    prov = json.loads((r.run_dir / "provenance.json").read_text())["starts"][0]
    assert prov["milestones"] == [6, 8]
    assert RunConfig(model="prenet", iterations=7).milestones(7) == [4, 6]  # round(4.2), round(5.6)


def test_epochs_become_iterations(tmp_path):
    # 84 embedded training tiles, batch 28: one epoch is 3 iterations
    r = train(_cfg(tmp_path, iterations=None, epochs=1, batch=28, crop=16, val_data=None), progress=False)
    assert r.total_iterations == 3 and r.finished
    prov = json.loads((r.run_dir / "provenance.json").read_text())["starts"][0]
    assert prov["train_pairs"] == 84 and prov["run_epochs"] == 1.0


# ------------------------------------------------------------------------------ (d) exemplars in the loop

def test_exemplar_reaches_the_model_and_is_recorded(tmp_path, tinyex):
    r = train(_cfg(tmp_path, model="tinyex", model_config={}, exemplar="self", iterations=2, val_data=None),
              progress=False)
    assert tinyex.seen == [(2, 3, 32, 32)] * 2
    rep = json.loads((r.run_dir / "exemplars.json").read_text())
    assert rep["policy"] == "self" and rep["model_uses_exemplar"] and rep["self_pairs"] == 84
    # exemplar branch off: no exemplar is drawn or passed
    tinyex.seen.clear()
    train(_cfg(tmp_path, model="tinyex", model_config={"exemplar": False}, exemplar="none", iterations=1,
               val_data=None), progress=False)
    assert tinyex.seen == [None]


def test_policy_none_needs_the_exemplar_branch_off(tmp_path, tinyex):
    with pytest.raises(ConfigError, match="exemplar='none' but model 'tinyex' has its exemplar branch on"):
        train(_cfg(tmp_path, model="tinyex", model_config={}, exemplar="none"), progress=False)


def test_model_without_exemplar_records_the_unused_policy(tmp_path):
    r = train(_cfg(tmp_path, exemplar="official", iterations=1, val_data=None), progress=False)
    assert any("unused" in n for n in json.loads((r.run_dir / "run.json").read_text())["notes"])
    assert json.loads((r.run_dir / "exemplars.json").read_text())["model_uses_exemplar"] is False


def test_msgnn_tiny_trains_with_exemplars(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "msgnn", _msgnn_spec())
    cfg = _cfg(tmp_path, model="msgnn", model_config={"n_subnets": 1, "m_blocks": 1, "channels": 8},
               exemplar="random", iterations=2, val_limit=1)
    r = train(cfg, progress=False)
    assert r.finished and np.isfinite(r.metrics["msgnn-rgb"]["psnr"])
    _, meta = read_exported(r.weights)
    assert meta["model"] == "msgnn" and meta["model_config"]["n_subnets"] == 1


# ------------------------------------------------------------------------------ run folder, precision

def test_run_folder_contents(tmp_path):
    cfg = _cfg(tmp_path, iterations=4, val_every=2)
    r = train(cfg, progress=False)
    d = r.run_dir
    assert d == tmp_path / cfg.config_hash()
    for name in ("config.yaml", "provenance.json", "exemplars.json", "train_manifest.csv", "log.csv", "run.json",
                 "model.safetensors", "checkpoints/latest.pt", "checkpoints/iter_2.pt", "checkpoints/iter_4.pt"):
        assert (d / name).is_file(), name
    assert RunConfig.from_file(d / "config.yaml") == cfg
    rows = _log(d)
    assert list(rows[0]) == ["iteration", "epoch", "lr", "train_loss", "msgnn-rgb/psnr", "msgnn-rgb/ssim", "seconds"]
    assert [bool(row["msgnn-rgb/psnr"]) for row in rows] == [False, True, False, True]
    _, meta = read_exported(d / "model.safetensors")
    assert meta["config_hash"] == cfg.config_hash() and meta["iterations"] == 4 and meta["model"] == "prenet"
    assert meta["metric"] == r.metrics and meta["model_config"] == PReNetConfig(**TINY).to_dict()
    prov = json.loads((d / "provenance.json").read_text())["starts"][0]
    assert {"commit", "device", "versions", "train_manifest_sha256"} <= set(prov)
    status = json.loads((d / "run.json").read_text())
    assert status["finished"] and status["iteration"] == 4


def test_bf16_off_cuda_falls_back_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="bf16 needs CUDA"):
        r = train(_cfg(tmp_path, precision="bf16", iterations=1, val_data=None), progress=False)
    assert r.precision == "fp32"
    assert "bf16 needs CUDA" in json.loads((r.run_dir / "provenance.json").read_text())["starts"][0]["notes"][0]


# ------------------------------------------------------------------------------ (e) refusals

def test_bad_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no known data layout"):
        train(_cfg(tmp_path, train_data=str(empty)), progress=False)
    with pytest.raises(DatasetError, match="data folder not found"):
        train(_cfg(tmp_path, train_data=str(tmp_path / "missing")), progress=False)
    small = tmp_path / "small"
    for name in ("a", "b"):
        write_image(small / "rain" / f"{name}.png", np.full((20, 30, 3), 0.5, np.float32))
        write_image(small / "norain" / f"{name}.png", np.full((20, 30, 3), 0.4, np.float32))
    with pytest.raises(DatasetError, match=r"crop 32×32 is larger than 2 training image\(s\).*a\.png \(20×30\)"):
        train(_cfg(tmp_path, train_data=str(small)), progress=False)
    with pytest.raises(ConfigError, match="unknown model 'prenett'"):
        train(_cfg(tmp_path, model="prenett", model_config={}), progress=False)
    with pytest.raises(ConfigError, match="divisible"):
        from derainkit.train import loop

        loop._Run(_cfg(tmp_path, batch=3), loop._Dist(world=2, rank=0), progress=False)


def test_checkpoints_of_other_runs_are_refused(tmp_path, tinyex):
    cfg = _cfg(tmp_path, iterations=2, val_data=None)
    first = train(cfg, progress=False)
    with pytest.raises(DerainkitError, match="already holds this run"):
        train(cfg, progress=False)
    other = cfg.with_overrides(["lr=1e-3"])
    with pytest.raises(CheckpointError, match="differs in: lr"):
        train(other, resume=first.run_dir, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(other, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="checkpoint of model 'prenet', but this run trains 'tinyex'"):
        train(_cfg(tmp_path, model="tinyex", model_config={}, exemplar="self", val_data=None),
              resume=first.run_dir, progress=False)
    # Asked for explicitly, a changed config starts its own run folder from that state.
    branched = train(other.with_overrides(["iterations=3"]), resume=first.run_dir, allow_config_change=True,
                     progress=False)
    assert branched.finished and branched.run_dir != first.run_dir and branched.iteration == 3
    assert any("changed config" in n for n in json.loads((branched.run_dir / "run.json").read_text())["notes"])
    rows = _log(branched.run_dir)
    assert [int(r["iteration"]) for r in rows] == [3] and float(rows[0]["lr"]) == pytest.approx(1e-5)
