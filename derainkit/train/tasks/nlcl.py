"""NLCL's unsupervised training (Ye et al., CVPR 2022) as a training task: unpaired rainy and clean crops,
a discriminator step and a generator step per iteration, one optimizer per network.

Per iteration, in the official order (reference note §1.4): forward (B̂ = G_B(O), R̂ = G_R(O), and
G_B(B_real) for the identity LocNCE) → D step (LSGAN on B̂.detach() vs unpaired clean B_real) → G step
(D frozen; ``derainkit.losses.nlcl.generator_losses``: adversarial + location contrastive + layer
contrastive + consistency + L1). Images enter the networks in [-1, 1], as the official ToTensor +
Normalize(0.5, 0.5) makes them; the sampler's crops are [0, 1].

Optimizers, faithful vs fixed (``NLCLTaskConfig.faithful_optimizers``; reference note §2.3–2.4):

=================  ==================================  =========================================
network            official code (faithful)            fixed (default)
=================  ==================================  =========================================
G_B + G_R          one Adam over both                  the same
D                  Adam                                the same
GenSample heads    an Adam whose ``step()`` is never   Adam, stepped after each G step
                   called (``zero_grad`` where ``step``
                   was meant): fixed random heads
AdvRain heads      Adam, stepped                       Adam, stepped
AdvBack heads      its "Adam" is built over the        Adam over its own parameters, stepped
                   AdvRain heads: AdvBack never
                   trains, AdvRain steps twice
=================  ==================================  =========================================

All Adams: the run's ``lr`` and ``betas`` (the official recipe, ModelSpec ``nlcl``: 2e-4, (0.5, 0.999)).
Schedule (``lr_policy``): ``linear`` as the official code — constant, then a linear decay to near zero
over the last ``decay_fraction`` of the run (official: 200 constant + 10 decaying epochs of 210; here
per iteration) — or ``step``, the run's MultiStepLR.

Anchors of the non-local samplers: ``anchors="seeded"`` (default) draws them as a pure function of
(seed, iteration, sampler), so an interrupted run resumes bit-identically from any checkpoint;
``"python"`` draws from Python's ``random`` in the official order (its state is in every checkpoint,
so resume is exact too). The loss terms themselves (and their faithful switch) are
``task_config.loss`` (:class:`derainkit.losses.nlcl.NLCLLossConfig`).

Multi-process: the networks run several forward passes per step (D on fake and real, G_B on two
inputs), which DistributedDataParallel's hooks do not allow; gradients are averaged across ranks
explicitly before each optimizer step (``allreduce_grads``), so ranks stay in lockstep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict, to_plain_dict
from derainkit.train.tasks.base import TrainingTask, make_optimizer, make_scheduler

_LR_POLICIES = ("linear", "step")
_ANCHORS = ("seeded", "python")
# Named losses logged each iteration (train_<name> columns), in the official loss's order.
LOSS_NAMES = ("G", "D", "G_GAN", "NCE_both", "DisNCE", "MSE", "L1", "D_fake", "D_real")


@dataclass(frozen=True)
class NLCLTaskConfig:
    clean_data: str | None = None  # unpaired clean images; None: trainA/trainB folders or a paired set's halves
    loss: dict = field(default_factory=dict)  # NLCLLossConfig keys (faithful, lambdas, tau, patch counts ...)
    faithful_optimizers: bool = False  # the official optimizer bugs (module docstring)
    lr_policy: str = "linear"
    decay_fraction: float = 10 / 210  # official: linear decay over the last 10 of 210 epochs
    anchors: str = "seeded"

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="task_config.")
        if self.lr_policy not in _LR_POLICIES:
            raise ConfigError(f"task_config.lr_policy={self.lr_policy!r} is invalid; expected one of {list(_LR_POLICIES)}")
        if self.anchors not in _ANCHORS:
            raise ConfigError(f"task_config.anchors={self.anchors!r} is invalid; expected one of {list(_ANCHORS)}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"task_config.decay_fraction={self.decay_fraction} must be in (0, 1]")
        self.loss_config()  # validates the loss keys now

    def loss_config(self):
        from derainkit.losses.nlcl import NLCLLossConfig

        return NLCLLossConfig.from_dict(self.loss)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "NLCLTaskConfig":
        return strict_from_dict(cls, data, "NLCL task config")

    def to_dict(self) -> dict[str, Any]:
        d = to_plain_dict(self)
        d["loss"] = self.loss_config().to_dict()  # canonical: {} and the explicit defaults hash alike
        return d


class _LinearDecay:
    """LR factor 1 until ``start``, then linear down to 1/(n+1) at the last iteration (the official
    rule ``1 − max(0, epoch + 1 − n_epochs)/(n_epochs_decay + 1)``, per iteration). A callable object,
    so LambdaLR can save it in a checkpoint."""

    def __init__(self, start: int, total: int) -> None:
        self.start, self.span = int(start), max(1, int(total) - int(start))

    def __call__(self, step: int) -> float:
        return 1.0 - max(0, step + 1 - self.start) / (self.span + 1)


class NLCLTask(TrainingTask):
    loss_names = LOSS_NAMES
    static_graph = False

    def load_data(self):
        from derainkit.train.dataset import UnpairedSampler, UnpairedSet

        run = self.run
        self.loss_cfg = self.config.loss_config()
        self.data = UnpairedSet.load(run.train_data, self.config.clean_data, run.layout, progress=self.ctx.progress)
        self.train_root = self.data.root
        margin = self.loss_cfg.patch_size
        if run.crop < 2 * margin + 2:
            raise ConfigError(f"crop={run.crop}: NLCL's non-local sampler needs crops of at least {2 * margin + 2} "
                              "px (anchors sit 16 px inside the border); the official crop is 256")
        self.sampler = UnpairedSampler(self.data, run.crop, run.batch, run.seed)
        return self.sampler, len(self.data)

    def build(self) -> None:
        from derainkit.models.nlcl import NLCLConfig, NLCLDerain, build_nlcl_nets

        cfg = NLCLConfig.from_dict(dict(self.run.model_config))
        nets = build_nlcl_nets(cfg, self.loss_cfg.gen_layers, self.loss_cfg.adv_layers, self.loss_cfg.faithful)
        self.nets = nets.to(self.ctx.device).train()
        self.modules = {"background": nets.background, "rain": nets.rain, "disc": nets.disc,
                        "gen_head": nets.gen_head, "adv_back_head": nets.adv_back_head,
                        "adv_rain_head": nets.adv_rain_head}
        run = self.run
        generators = list(nets.background.parameters()) + list(nets.rain.parameters())
        self.optimizers = {"G": make_optimizer(run, generators), "D": make_optimizer(run, nets.disc.parameters()),
                           "gen_head": make_optimizer(run, nets.gen_head.parameters()),
                           "adv_rain_head": make_optimizer(run, nets.adv_rain_head.parameters())}
        back_params = nets.adv_rain_head if self.config.faithful_optimizers else nets.adv_back_head
        self.optimizers["adv_back_head"] = make_optimizer(run, back_params.parameters())  # official bug: AdvRain's
        self.derain = NLCLDerain(cfg)
        self.derain.background, self.derain.rain, self.derain.rain_loaded = nets.background, nets.rain, True

    def stepped(self) -> list[str]:
        """The optimizers that step (faithful: not gen_head's, which the official code never steps)."""
        never = {"gen_head"} if self.config.faithful_optimizers else set()
        return [name for name in self.optimizers if name not in never]

    def build_schedulers(self, total: int) -> None:
        start = round(total * (1.0 - self.config.decay_fraction))
        self.schedulers = {
            name: (make_scheduler(self.run, self.optimizers[name], total) if self.config.lr_policy == "step"
                   else torch.optim.lr_scheduler.LambdaLR(self.optimizers[name], _LinearDecay(start, total)))
            for name in self.stepped()}

    def wrap(self, wrapper) -> None:
        self.calls = dict(self.modules)  # no DDP hooks: gradients are averaged in step() (module docstring)

    def _anchors(self, iteration: int):
        from derainkit.losses.nonlocal_sampling import PythonRandomAnchors, SeededAnchors

        if self.config.anchors == "python":
            return PythonRandomAnchors()
        return SeededAnchors(self.run.seed, iteration)

    def step(self, batch: Mapping[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        from derainkit.losses.nlcl import discriminator_losses, generator_losses, nlcl_forward

        b = self.ctx.to_device(batch, images=("rainy", "clean"))
        rainy, clean = b["rainy"] * 2.0 - 1.0, b["clean"] * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        nets, opts = self.nets, self.optimizers
        with self.ctx.autocast():
            fwd = nlcl_forward(nets, rainy, clean, self.loss_cfg)
        _trainable(nets.disc, True)
        opts["D"].zero_grad(set_to_none=True)
        d_terms = discriminator_losses(nets, fwd)
        d_terms["D"].backward()
        self._step_optimizer("D")
        _trainable(nets.disc, False)  # gradients still flow through D to B̂ and R̂
        for name in ("G", "gen_head", "adv_rain_head", "adv_back_head"):
            opts[name].zero_grad(set_to_none=True)
        g_terms = generator_losses(nets, fwd, self._anchors(iteration), self.loss_cfg)
        g_terms["G"].backward()
        self._step_optimizer("G")
        for name in ("gen_head", "adv_rain_head", "adv_back_head"):
            if name in self.stepped():  # faithful: adv_back_head's optimizer holds AdvRain's weights
                self._step_optimizer(name)
        _trainable(nets.disc, True)
        terms = {**d_terms, **g_terms}
        return {name: terms[name].detach() for name in self.loss_names}

    def _step_optimizer(self, name: str) -> None:
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.allreduce_grads(params)
        if self.run.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.run.grad_clip)
        optimizer.step()

    def export_module(self) -> nn.Module:
        return self.derain

    def run_files(self) -> dict[str, Any]:
        return {"nlcl_task.json": {"task_config": self.config.to_dict(), "rainy_images": len(self.data.rainy),
                                   "clean_images": len(self.data.clean),
                                   "clean_ids": [p.id for p in self.data.clean_pairs][:1000]}}

    def manifests(self) -> dict[str, Any]:
        if any(p.layout == "memory" for p in self.data.rainy_pairs):
            return {}
        return {"train_manifest.csv": self.data.rainy_pairs, "clean_manifest.csv": self.data.clean_pairs}


def _trainable(module: nn.Module, on: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(on)
