"""The training-task seam: a second, unpaired task with two optimizers, an adversarial step and state that
changes every iteration runs through the same loop, logs its named losses, and resumes bit-identically;
validation figures equal `evaluate` figures; the package's import layering."""
from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import CheckpointError, ConfigError
from derainkit.models import MODELS, ModelSpec
from derainkit.strictconfig import strict_from_dict
from derainkit.train import RunConfig, train
from derainkit.train.checkpoint import load_checkpoint, read_exported
from derainkit.train.dataset import UnpairedSampler, UnpairedSet
from derainkit.train.tasks import TASKS, TaskSpec
from derainkit.train.tasks.base import TrainingTask, make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _embedded_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERAINKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# ------------------------------------------------------------------------------ a toy unpaired GAN task

@dataclass(frozen=True)
class ToyGenConfig:
    channels: int = 4

    @classmethod
    def from_dict(cls, d):
        return strict_from_dict(cls, d, "toy generator config")

    def to_dict(self):
        return asdict(self)


class ToyGen(nn.Module):
    def __init__(self, config: ToyGenConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(nn.Conv2d(3, config.channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(config.channels, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


@dataclass(frozen=True)
class ToyGANConfig:
    lambda_idt: float = 0.5
    lr_d: float = 1e-3
    ema: float = 0.9

    @classmethod
    def from_dict(cls, d):
        return strict_from_dict(cls, d, "toy GAN task config")

    def to_dict(self):
        return asdict(self)


class ToyGANTask(TrainingTask):
    """Generator vs a patch critic on unpaired crops; a running EMA of the G loss is task state."""

    loss_names = ("G", "D")
    static_graph = False
    export_name = "generator"

    def load_data(self):
        self.data = UnpairedSet.load(self.run.train_data, progress=False)
        self.train_root = self.data.root
        return UnpairedSampler(self.data, self.run.crop, self.run.batch, self.run.seed), len(self.data)

    def build(self):
        g = ToyGen(ToyGenConfig.from_dict(self.run.model_config)).to(self.ctx.device)
        d = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3)).to(self.ctx.device)
        self.modules = {"generator": g.train(), "discriminator": d.train()}
        self.optimizers = {"generator": make_optimizer(self.run, g.parameters()),
                           "discriminator": make_optimizer(self.run, d.parameters(), **self.optimizer_options("discriminator"))}
        self.ema, self.steps = torch.zeros(()), 0

    def optimizer_options(self, name):
        options = super().optimizer_options(name)
        if name == "discriminator":
            options["lr"] = self.config.lr_d
        return options

    def step(self, batch, iteration):
        b = self.ctx.to_device(batch, images=("rainy", "clean"))
        g, d = self.calls["generator"], self.calls["discriminator"]
        noise = 0.01 * torch.randn_like(b["rainy"])  # draws the torch RNG every step: resume must restore it
        fake = g(b["rainy"] + noise)
        for p in self.modules["discriminator"].parameters():
            p.requires_grad_(False)
        loss_g = F.mse_loss(d(fake), torch.ones_like(d(fake))) + self.config.lambda_idt * F.l1_loss(fake, b["rainy"])
        self.optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizers["generator"].step()
        for p in self.modules["discriminator"].parameters():
            p.requires_grad_(True)
        real, fake_score = d(b["clean"]), d(fake.detach())
        loss_d = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake_score, torch.zeros_like(fake_score)))
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["discriminator"].step()
        self.ema = self.config.ema * self.ema + (1 - self.config.ema) * loss_g.detach().cpu()
        self.steps += 1
        return {"G": loss_g.detach(), "D": loss_d.detach()}

    def state_dict(self):
        return {"ema": self.ema.clone(), "steps": self.steps}

    def load_state_dict(self, state):
        self.ema, self.steps = state["ema"].clone(), int(state["steps"])


@pytest.fixture
def toygan(monkeypatch):
    monkeypatch.setitem(TASKS, "toygan", TaskSpec(name="toygan", description="test task",
                                                  config_from_dict=ToyGANConfig.from_dict, build=ToyGANTask))
    monkeypatch.setitem(MODELS, "toygen", ModelSpec(
        name="toygen", description="test generator", config_from_dict=ToyGenConfig.from_dict, build=ToyGen,
        load_weights=lambda m, p: m, official_quantize="round", infer_bytes_per_pixel=100.0, task="toygan"))


def _gan_cfg(out: Path, **kw) -> RunConfig:
    base = dict(model="toygen", model_config={}, crop=24, batch=2, iterations=7, val_data=None, log_every=2,
                checkpoint_every=3, exemplar="none", out_dir=str(out), device="cpu", task_config={"lr_d": 2e-3})
    base.update(kw)
    return RunConfig.from_dict(base)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["modules"].keys() == b["modules"].keys() == {"generator", "discriminator"}
    for name in a["modules"]:
        for k, v in a["modules"][name].items():
            assert torch.equal(v, b["modules"][name][k]), (name, k)
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for p in sa:
            for k in sa[p]:
                assert torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k])), (name, p, k)
        assert a["optimizers"][name]["param_groups"] == b["optimizers"][name]["param_groups"]
    assert a["schedulers"] == b["schedulers"]
    assert torch.equal(a["task_state"]["ema"], b["task_state"]["ema"]) and a["task_state"]["steps"] == 7
    assert a["task_state"]["steps"] == b["task_state"]["steps"]


def test_unpaired_two_optimizer_task_resumes_bit_identically(tmp_path, toygan):
    whole = train(_gan_cfg(tmp_path / "a"), progress=False)
    cfg = _gan_cfg(tmp_path / "b")
    part = train(cfg, progress=False, max_iterations_this_call=4)  # off the checkpoint grid (3, 6)
    assert (part.iteration, part.finished) == (4, False)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.finished and resumed.iteration == 7
    a = load_checkpoint(whole.run_dir / "checkpoints" / "latest.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "latest.pt")
    assert a["task"] == "toygan"
    _assert_same_state(a, b)
    # the discriminator kept its own learning rate from the task config (both then follow the schedule)
    assert a["optimizers"]["discriminator"]["param_groups"][0]["initial_lr"] == pytest.approx(2e-3)
    assert a["optimizers"]["generator"]["param_groups"][0]["initial_lr"] == pytest.approx(5e-4)
    rows_a, rows_b = _rows(whole.run_dir), _rows(resumed.run_dir)
    assert list(rows_a[0]) == ["iteration", "epoch", "lr", "train_G", "train_D", "seconds"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(rows_a) == drop(rows_b)
    assert [int(r["iteration"]) for r in rows_a] == [2, 4, 6, 7]
    wa, meta = read_exported(whole.weights)
    wb, _ = read_exported(resumed.weights)
    assert meta["model"] == "toygen" and meta["task"] == "toygan" and set(wa) == set(ToyGen(ToyGenConfig()).state_dict())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_task_options_are_strict_and_named_in_the_hash(tmp_path, toygan):
    with pytest.raises(ConfigError, match=r"task_config \(task 'toygan'\).*unknown toy GAN task config key"):
        _gan_cfg(tmp_path, task_config={"lr_dd": 1})
    with pytest.raises(ConfigError, match="task='nope' is invalid"):
        _gan_cfg(tmp_path, task="nope")
    assert _gan_cfg(tmp_path).config_hash() != _gan_cfg(tmp_path, task_config={"lr_d": 3e-3}).config_hash()
    # the default options hash like no options (so runs stored before tasks existed keep their names)
    assert _gan_cfg(tmp_path, task_config={}).config_hash() == \
        _gan_cfg(tmp_path, task_config=ToyGANConfig().to_dict()).config_hash()
    prenet = RunConfig(model="prenet", iterations=3)
    assert prenet.resolved_task == "paired"
    assert prenet.config_hash() == RunConfig(model="prenet", iterations=3, task="paired", task_config={}).config_hash()
    assert "task" not in prenet.identity() and "task_config" not in prenet.identity()


def test_a_checkpoint_of_another_task_is_refused(tmp_path, toygan):
    first = train(_gan_cfg(tmp_path, iterations=2), progress=False)
    paired = RunConfig.from_dict(dict(model="toygen", task="paired", crop=24, batch=2, iterations=2, val_data=None,
                                      exemplar="none", out_dir=str(tmp_path), device="cpu"))
    with pytest.raises(CheckpointError, match="training task 'toygan'"):
        train(paired, resume=first.run_dir, allow_config_change=True, progress=False)


def test_unpaired_sampler_is_a_pure_function_and_splits_the_scenes():
    data = UnpairedSet.load("embedded:train", progress=False)
    rainy_ids = {p.id for p in data.rainy_pairs}
    clean_ids = {p.id for p in data.clean_pairs}
    assert rainy_ids and clean_ids and not rainy_ids & clean_ids  # no scene in both domains
    s1, s2 = UnpairedSampler(data, 16, 4, seed=3), UnpairedSampler(data, 16, 4, seed=3)
    b1, b2 = s1.batch(5), s2.batch(5, slots=[2, 3])
    assert torch.equal(b1["rainy"][2:], b2["rainy"]) and torch.equal(b1["clean"][2:], b2["clean"])
    assert b1["rainy"].shape == (4, 3, 16, 16)
    one = UnpairedSampler(data, 16, 1, seed=3)
    epoch = [int(one.batch(it)["index"][0]) for it in range(len(data.rainy))]
    assert sorted(epoch) == list(range(len(data.rainy)))  # each rainy image once per epoch


# ------------------------------------------------------------------------------ validation == evaluate

def test_validation_figures_equal_evaluate_figures(tmp_path):
    from derainkit.data import discover_pairs, resolve_data_path
    from derainkit.infer import load_predictor
    from derainkit.metrics.evaluate import evaluate

    cfg = RunConfig.from_dict(dict(model="prenet", model_config={"stages": 2, "channels": 8, "res_blocks": 1},
                                   crop=32, batch=2, iterations=3, val_limit=3, val_protocols=["msgnn-rgb", "matlab-y"],
                                   exemplar="none", out_dir=str(tmp_path), device="cpu", checkpoint_every=0))
    r = train(cfg, progress=False)
    pairs = discover_pairs(resolve_data_path(cfg.val_data))[:3]
    spec, predictor = load_predictor("prenet", r.weights, device="cpu")
    ev = evaluate(pairs, predictor.predict_fn(), tmp_path / "ev", list(cfg.val_protocols),
                  quantize=spec.official_quantize, progress=False)
    for proto in cfg.val_protocols:
        assert r.metrics[proto]["psnr"] == pytest.approx(ev.means[proto]["psnr"], abs=1e-9)
        assert r.metrics[proto]["ssim"] == pytest.approx(ev.means[proto]["ssim"], abs=1e-12)
        assert r.input_metrics[proto]["psnr"] == pytest.approx(ev.means[proto]["input_psnr"], abs=1e-9)


# ------------------------------------------------------------------------------ import layering

LOWER = ["derainkit.models", "derainkit.knn", "derainkit.metrics", "derainkit.metrics.evaluate", "derainkit.data",
         "derainkit.weights", "derainkit.infer", "derainkit.losses"]


def test_lower_layers_do_not_import_train_or_experiments():
    # One fresh interpreter for all of them: if together they pull in no higher layer, none does alone.
    code = (f"import sys\nfor m in {LOWER!r}: __import__(m)\n"
            "import derainkit.models as m; m.build_model('prenet'); m.build_model('msgnn')\n"
            "bad = sorted(n for n in sys.modules if n.startswith(('derainkit.train', 'derainkit.experiments')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the lower layers (and building models) pulled in {out}"


def test_reading_a_run_config_does_not_load_the_networks():
    code = ("import sys\nfrom derainkit.train import RunConfig\nRunConfig(model='msgnn', model_config={'k': 7})\n"
            "print(','.join(sorted(n for n in sys.modules if n.startswith(('derainkit.knn', 'derainkit.models.msgnn.model')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
