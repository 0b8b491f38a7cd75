"""DistributedDataParallel on CPU (gloo, 2 processes): the same global batches as one process."""
from __future__ import annotations

import csv
import os

import pytest
import torch

from derainkit.train import RunConfig, train
from derainkit.train.checkpoint import read_exported
from derainkit.train.distributed import launch_local

pytestmark = pytest.mark.slow


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAINKIT_CACHE", str(tmp_path / "cache"))  # inherited by the spawned ranks


def _losses(run_dir):
    with open(run_dir / "log.csv", newline="") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh)]


TINY = {
    "prenet": ({"stages": 2, "channels": 8, "res_blocks": 1}, "none"),
    # n_subnets=2 keeps modules that never get a gradient (code variant): DDP must cope with them
    "msgnn": ({"n_subnets": 2, "m_blocks": 1, "channels": 8}, "random"),
}


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("model", sorted(TINY))
def test_two_ranks_match_one_process(tmp_path, model):
    from derainkit.models import MODELS

    if model not in MODELS:
        pytest.skip(f"{model!r} is not registered yet (the spawned ranks build it through the registry)")
    model_config, exemplar = TINY[model]
    base = dict(model=model, model_config=model_config, crop=32, batch=4, iterations=3, val_limit=1,
                val_protocols=["msgnn-rgb"], log_every=1, checkpoint_every=2, exemplar=exemplar, device="cpu")
    single = train(RunConfig.from_dict({**base, "out_dir": str(tmp_path / "one")}), progress=False)
    assert "WORLD_SIZE" not in os.environ
    result = launch_local(RunConfig.from_dict({**base, "out_dir": str(tmp_path / "two")}), world_size=2)
    assert result["world_size"] == 2 and result["finished"] and result["config_hash"] == single.config_hash
    w1, _ = read_exported(single.weights)
    w2, _ = read_exported(result["weights"])
    # Same samples; only the order of the gradient reduction differs.
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    two = tmp_path / "two" / single.config_hash
    assert result["run_dir"] == str(two)
    assert _losses(two) == pytest.approx(_losses(single.run_dir), rel=1e-5)  # the global batch's loss
    # only rank 0 wrote files: one set, no stray temp files
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["iter_2.pt", "latest.pt"]
