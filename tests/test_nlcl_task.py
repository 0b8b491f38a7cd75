"""NLCL's unsupervised training task through the one training loop: named losses, the official optimizer
quirks on request, exact resume, and an export the registry rebuilds as a deraining model."""
from __future__ import annotations

import csv

import pytest
import torch

from derainkit.models import build_model
from derainkit.train import RunConfig, train
from derainkit.train.checkpoint import load_checkpoint
from derainkit.train.tasks.nlcl import LOSS_NAMES, NLCLTaskConfig, _LinearDecay

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"channels": 8, "res_blocks": 4, "disc_channels": 8, "head_channels": 16}
TINY_LOSS = {"gen_layers": [0, 2, 4], "num_patches": 32, "num_neg": 16}


@pytest.fixture(scope="module", autouse=True)
def _embedded_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERAINKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _cfg(out, faithful: bool = False, **kw) -> RunConfig:
    base = dict(model="nlcl", model_config=TINY, crop=40, batch=2, iterations=4, val_data=None, log_every=1,
                checkpoint_every=3, exemplar="none", out_dir=str(out), device="cpu", lr=2e-4, betas=[0.5, 0.999],
                task_config={"loss": TINY_LOSS, "faithful_optimizers": faithful})
    base.update(kw)
    return RunConfig.from_dict(base)


def _heads(state) -> dict[str, dict]:
    return {name: state["modules"][name] for name in ("gen_head", "adv_back_head", "adv_rain_head")}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_identical_and_losses_are_named(tmp_path):
    whole = train(_cfg(tmp_path / "a"), progress=False)
    cfg = _cfg(tmp_path / "b")
    train(cfg, progress=False, max_iterations_this_call=2)
    resumed = train(cfg, resume=True, progress=False)
    a = load_checkpoint(whole.run_dir / "checkpoints" / "latest.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "latest.pt")
    assert set(a["modules"]) == {"background", "rain", "disc", "gen_head", "adv_back_head", "adv_rain_head"}
    for name in a["modules"]:
        assert _same(a["modules"][name], b["modules"][name]), name
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[p]["exp_avg"], sb[p]["exp_avg"]) for p in sa), name
    with open(whole.run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[3:3 + len(LOSS_NAMES)] == [f"train_{n}" for n in LOSS_NAMES]
    assert all(float(r["train_D"]) >= 0 for r in rows)


def test_faithful_optimizers_reproduce_the_official_bugs(tmp_path):
    from derainkit.models.nlcl import build_nlcl_nets

    fixed = load_checkpoint(train(_cfg(tmp_path / "fixed", iterations=2), progress=False).run_dir / "checkpoints")
    faithful = load_checkpoint(train(_cfg(tmp_path / "faith", faithful=True, iterations=2), progress=False).run_dir
                               / "checkpoints")
    torch.manual_seed(66)  # the run seeds like this before building (RunConfig.seed)
    from derainkit.models.nlcl import NLCLConfig

    init = build_nlcl_nets(NLCLConfig.from_dict(TINY), TINY_LOSS["gen_layers"])
    start = {n: {k: v.detach() for k, v in getattr(init, n).state_dict().items()}
             for n in ("gen_head", "adv_back_head", "adv_rain_head")}
    # official: GenSample heads never step, AdvBack's optimizer holds AdvRain's parameters
    assert _same(_heads(faithful)["gen_head"], start["gen_head"])
    assert _same(_heads(faithful)["adv_back_head"], start["adv_back_head"])
    assert not _same(_heads(faithful)["adv_rain_head"], start["adv_rain_head"])
    assert "gen_head" not in faithful["schedulers"]
    # fixed: every head trains
    for name in start:
        assert not _same(_heads(fixed)[name], start[name]), name


def test_the_export_is_a_deraining_model_with_its_rain_layer(tmp_path):
    r = train(_cfg(tmp_path, iterations=1, checkpoint_every=0), progress=False)
    model = build_model(weights=r.weights)
    x = torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        b, rain = model.layers(x)
    assert b.shape == rain.shape == x.shape and torch.isfinite(b).all()


def test_linear_decay_is_the_official_rule_per_iteration():
    f = _LinearDecay(start=8, total=10)
    assert [f(i) for i in range(7)] == [1.0] * 7
    assert f(8) == pytest.approx(1 - 1 / 3) and f(9) == pytest.approx(1 - 2 / 3)


def test_task_config_is_strict():
    from derainkit.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_policy"):
        NLCLTaskConfig.from_dict({"lr_policy": "cosine"})
    with pytest.raises(ConfigError, match="unknown NLCL loss config key"):
        NLCLTaskConfig.from_dict({"loss": {"lambda_gann": 1}})
    assert NLCLTaskConfig.from_dict({}).to_dict() == NLCLTaskConfig.from_dict(
        {"loss": NLCLTaskConfig().loss_config().to_dict()}).to_dict()
