"""The UniRain training task through ``derainkit.train.train``: four-type data, per-type losses weighted by
the reweighter (updated at each 3-iteration "epoch"), the weights as log columns, bit-identical resume
(modules, optimizer, reweighter state, log rows), the typed sampler as a pure function, and two gloo
ranks on CPU giving the global batch's losses."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from derainkit.data.rain_types import make_rain_types
from derainkit.errors import ConfigError, DatasetError
from derainkit.models import MODELS, ModelSpec
from derainkit.train import RunConfig, train
from derainkit.train.checkpoint import load_checkpoint, read_exported
from derainkit.train.tasks import TASKS, TaskSpec
from derainkit.train.tasks.unirain import TypedSampler, UniRainTaskConfig, _typed_sets, reweighting_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TYPES = ("drs", "drd", "nrs", "nrd")
TINY_MODEL = {"channels": 8, "blocks": [1, 1, 1, 1], "refinement_blocks": 1, "heads": [1, 1, 2, 2], "experts": 3}
TASK = {"epoch_iterations": 3, "val_size": 2, "val_crop": 32, "warmup_epochs": 1, "window": 3}


def register() -> None:
    """The registry entries the package will carry (set here, in this process, for the tests)."""
    from derainkit.lazy import lazy

    MODELS["unirain"] = ModelSpec(
        name="unirain", description="UniRain (test registration)",
        config_from_dict=lazy("derainkit.models.unirain", "UniRainConfig.from_dict"),
        build=lazy("derainkit.models.unirain", "UniRain"),
        load_weights=lazy("derainkit.models.unirain", "load_unirain_weights"),
        official_quantize="round", infer_bytes_per_pixel=3000.0, task="unirain")
    TASKS["unirain"] = TaskSpec(
        name="unirain", description="UniRain (test registration)",
        config_from_dict=lazy("derainkit.train.tasks.unirain", "UniRainTaskConfig.from_dict"),
        build=lazy("derainkit.train.tasks.unirain", "UniRainTask"))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, "unirain", MODELS.get("unirain"))  # restored (or removed) after the test
    monkeypatch.setitem(TASKS, "unirain", TASKS.get("unirain"))
    register()


@pytest.fixture(scope="module")
def four_types(tmp_path_factory) -> Path:
    import skimage.data as sd

    sources = [sd.chelsea(), sd.astronaut(), sd.coffee(), sd.rocket(), sd.immunohistochemistry(),
               sd.astronaut()[256:, 256:]]  # scikit-image's bundled photographs (no download)
    cleans = [cv2.resize(np.asarray(s)[..., :3], (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
              for s in sources]
    return make_rain_types(cleans, tmp_path_factory.mktemp("data") / "four", seed=0)


def _cfg(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(model="unirain", model_config=TINY_MODEL, task_config=TASK, train_data=str(data), val_data=None,
                crop=32, batch=4, iterations=10, log_every=1, checkpoint_every=4, optimizer="adamw", lr=1e-3,
                exemplar="none", out_dir=str(out), device="cpu", seed=5)
    base.update(kw)
    return RunConfig.from_dict(base)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def test_interrupted_run_resumes_bit_identically_with_weights_in_the_log(tmp_path, four_types, registered):
    whole = train(_cfg(four_types, tmp_path / "a"), progress=False)
    cfg = _cfg(four_types, tmp_path / "b")
    part = train(cfg, progress=False, max_iterations_this_call=5)  # off the checkpoint grid (4, 8) and mid-epoch
    assert (part.iteration, part.finished) == (5, False)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.finished and resumed.iteration == 10
    a = load_checkpoint(whole.run_dir / "checkpoints" / "latest.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "latest.pt")
    assert a["task"] == "unirain"
    for k, v in a["modules"]["model"].items():
        assert torch.equal(v, b["modules"]["model"][k]), k
    sa, sb = a["optimizers"]["model"]["state"], b["optimizers"]["model"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[p][k], sb[p][k]) for p in sa for k in sa[p])
    assert a["task_state"] == b["task_state"]
    rows = _rows(whole.run_dir)
    assert rows == _rows(resumed.run_dir)
    assert list(rows[0]) == (["iteration", "epoch", "lr", "train_loss"] + [f"train_loss_{t}" for t in TYPES]
                             + [f"train_w_{t}" for t in TYPES])
    weights = np.array([[float(r[f"train_w_{t}"]) for t in TYPES] for r in rows])
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    # update 1 (after iteration 3) is the warm-up; update 2 (after iteration 6) moves the weights
    assert np.all(weights[:6] == 0.25) and not np.allclose(weights[6], 0.25)
    assert np.all(weights[6:] >= 0.1 - 1e-7)  # the code variant's floor
    for r, w in zip(rows, weights):  # the batch loss is Σ_t w_t · loss_t (one step per row)
        parts = np.array([float(r[f"train_loss_{t}"]) for t in TYPES])
        assert float(r["train_loss"]) == pytest.approx(float(w @ parts), rel=1e-5)
    record = reweighting_record(whole.run_dir)
    assert record["epochs"] == [1, 2, 3] and set(record["val_losses"]) == set(TYPES)
    assert [record["weights"][t][1] for t in TYPES] == pytest.approx(weights[6], abs=1e-6)
    assert record["trace"][1]["tbs"] and record["config"]["variant"] == "code"
    _, meta = read_exported(whole.weights)
    assert meta["model"] == "unirain" and meta["task"] == "unirain"
    from derainkit.models import build_model

    net = build_model(weights=whole.weights)  # the export rebuilds the trained network through the registry
    assert net.config.channels == 8 and all(torch.equal(v, a["modules"]["model"][k]) for k, v in net.state_dict().items())
    assert (whole.run_dir / "unirain_data.json").is_file() and (whole.run_dir / "val_manifest.csv").is_file()


def test_uniform_and_paper_variants_and_balanced_sampling(tmp_path, four_types, registered):
    uni = train(_cfg(four_types, tmp_path, iterations=7, task_config={**TASK, "reweighting": "uniform",
                                                                      "sampling": "balanced",
                                                                      "val_root": str(four_types)}), progress=False)
    rows = _rows(uni.run_dir)
    assert all(float(r[f"train_w_{t}"]) == 0.25 for r in rows for t in TYPES)
    assert all(float(r[f"train_loss_{t}"]) > 0 for r in rows for t in TYPES)  # balanced: every type every batch
    paper = train(_cfg(four_types, tmp_path, iterations=7, task_config={**TASK, "reweighting": "paper"}),
                  progress=False)
    assert reweighting_record(paper.run_dir)["config"]["normalize"] is None  # the variant's default (yes)
    last = _rows(paper.run_dir)[-1]
    assert not np.isclose(float(last["train_w_drs"]), 0.25)


def test_typed_sampler_is_a_pure_function(four_types):
    train_sets, val_sets = _typed_sets(four_types, TYPES, val_size=2, seed=5)
    assert {t: len(s) for t, s in train_sets.items()} == {t: 4 for t in TYPES}
    assert all(not {p.id for p in val_sets[t].pairs} & {p.id for p in train_sets[t].pairs} for t in TYPES)
    for sampling in ("mixed", "balanced"):
        s1 = TypedSampler(train_sets, 24, 4, seed=3, sampling=sampling)
        s2 = TypedSampler(train_sets, 24, 4, seed=3, sampling=sampling)
        b1, b2 = s1.batch(7), s2.batch(7, slots=[1, 3])
        for k in ("rainy", "clean", "type", "noise_seed", "index"):
            assert torch.equal(b1[k][[1, 3]], b2[k]), k
    mixed = TypedSampler(train_sets, 24, 1, seed=3, sampling="mixed")
    seen = sorted((int(mixed.batch(i)["type"]), int(mixed.batch(i)["index"])) for i in range(16))
    assert seen == [(t, i) for t in range(4) for i in range(4)]  # every pair once per pass
    balanced = TypedSampler(train_sets, 24, 8, seed=3, sampling="balanced")
    assert balanced.batch(2)["type"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    modes = {int(TypedSampler(train_sets, 24, 4, seed=3).sample(i, 0)["mode"]) for i in range(40)}
    assert modes <= set(range(1, 8)) and len(modes) > 3  # the code never draws the identity
    with pytest.raises(ConfigError, match="balanced"):
        TypedSampler(train_sets, 24, 2, seed=3, sampling="balanced")
    with pytest.raises(DatasetError, match="val_size"):
        _typed_sets(four_types, TYPES, val_size=6, seed=5)
    # a separate validation folder: nothing held aside, its first pairs validate
    full, other = _typed_sets(four_types, TYPES, val_size=3, seed=5, val_root=four_types)
    assert all(len(full[t]) == 6 and [p.id for p in other[t].pairs] == [p.id for p in full[t].pairs][:3] for t in TYPES)


def test_task_config_is_strict():
    with pytest.raises(ConfigError, match="unknown UniRain task config key"):
        UniRainTaskConfig.from_dict({"epochs": 3})
    with pytest.raises(ConfigError, match="types"):
        UniRainTaskConfig.from_dict({"types": ["drs", "snow"]})
    with pytest.raises(ConfigError, match="variant"):
        UniRainTaskConfig.from_dict({"reweighting": "coba"})
    cfg = UniRainTaskConfig.from_dict({"types": ["drs", "nrd"], "floor": "0.2", "epoch_iterations": 50})
    assert cfg.types == ("drs", "nrd") and cfg.floor == 0.2
    assert UniRainTaskConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------ two gloo ranks

def _rank(rank: int, world: int, port: int, cfg: dict, queue) -> None:
    """One spawned rank: registers the UniRain entries in this process (spawned ranks start from the
    package's registry), then trains."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    register()
    result = train(RunConfig.from_dict(cfg), progress=False)
    if rank == 0:
        queue.put(result.to_dict())


@pytest.mark.slow  # two spawned interpreters: ~30 s on a loaded 2-core machine, mostly start-up
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_ranks_compute_the_global_batch(tmp_path, four_types, registered, monkeypatch):
    import torch.multiprocessing as mp

    from derainkit.train.distributed import _free_port

    monkeypatch.setenv("DERAINKIT_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(four_types, tmp_path / "one", iterations=7, checkpoint_every=0)
    single = train(cfg, progress=False)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    two_cfg = {**cfg.to_dict(), "out_dir": str(tmp_path / "two")}
    mp.spawn(_rank, args=(2, _free_port(), two_cfg, queue), nprocs=2, join=True)
    result = queue.get()
    assert result["world_size"] == 2 and result["finished"] and result["config_hash"] == single.config_hash
    one_rows, two_rows = _rows(single.run_dir), _rows(Path(result["run_dir"]))
    cols = ["train_loss"] + [f"train_loss_{t}" for t in TYPES] + [f"train_w_{t}" for t in TYPES]
    for a, b in zip(one_rows, two_rows):  # same samples and noise; only reduction order differs
        assert [float(b[c]) for c in cols] == pytest.approx([float(a[c]) for c in cols], rel=1e-4, abs=1e-6)
    w1, _ = read_exported(single.weights)
    w2, _ = read_exported(result["weights"])
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-5)
    assert reweighting_record(result["run_dir"])["epochs"] == [1, 2]
