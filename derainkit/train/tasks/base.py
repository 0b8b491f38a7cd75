"""The training-task seam: what differs between model families, behind the few methods the loop calls.

The loop (:mod:`derainkit.train.loop`) keeps what every family shares: seeding, the run folder, exact
resume, the log/validate/checkpoint cadence, the progress bar, DDP set-up and barriers,
``torch.compile``, autocast and channels-last. A :class:`TrainingTask` owns the rest:

=====================  ==============================================================================
``load_data()``        the training data and a batch source that is a pure function of (iteration,
                       slots), plus how many items one epoch passes over
``build()``            ``modules``, ``optimizers`` (dicts by name: the checkpoint stores each by name)
``build_schedulers``   one scheduler per optimizer (default: MultiStepLR at the run's milestones)
``step(batch, it)``    one optimisation step; returns *named* 0-d losses (one log column each)
``state_dict()``       task state beyond modules/optimizers/schedulers that must survive a resume
``export_module()``    the network that validation scores and ``model.safetensors`` holds (the registry
                       rebuilds it from ``export_metadata()``); default ``modules[export_name]``
``static_graph``       whether DDP may assume the same parameters are used every step
``run_files()``        extra JSON files for the run folder; ``manifests()`` the data's file lists
=====================  ==============================================================================

Design after BasicSR's generic loop calling ``optimize_parameters`` and timm's ``TrainingTask``:
a new family is a task module plus a registry line in :mod:`derainkit.train.tasks`, never a copy of
the loop.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from derainkit.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from derainkit.data import Pair
    from derainkit.train.config import RunConfig
    from derainkit.train.dataset import BatchSource


@dataclass
class TaskContext:
    """What the loop tells a task about the run it is part of."""

    run: "RunConfig"
    device: torch.device
    world: int = 1
    rank: int = 0
    progress: bool = True
    amp_dtype: torch.dtype | None = None  # autocast dtype (bf16 on CUDA), None for fp32
    notes: list[str] = field(default_factory=list)  # recorded in provenance.json and run.json

    def autocast(self) -> ContextManager:
        """Autocast for the forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Mapping[str, torch.Tensor], images: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """The batch on the device; the named image tensors in the run's memory format."""
        fmt = torch.channels_last if self.run.channels_last else torch.contiguous_format
        out = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            out[key] = value.contiguous(memory_format=fmt) if key in images else value
        return out


def make_optimizer(cfg: "RunConfig", params: Any, **options: Any) -> torch.optim.Optimizer:
    """Adam/AdamW with the run's lr, betas, eps and weight decay (``options`` override them)."""
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    kw.update(options)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    raise ValueError(f"optimizer={cfg.optimizer!r}")  # pragma: no cover - RunConfig validates it


class ExponentialFactor:
    """LR factor γ^(t/every) + floor/lr (TensorFlow's continuous exponential_decay plus a constant, as MSPFN
    trains). A callable object, so LambdaLR can keep it in a checkpoint."""

    def __init__(self, gamma: float, every: int, floor_ratio: float) -> None:
        self.gamma, self.every, self.floor_ratio = float(gamma), int(every), float(floor_ratio)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step / self.every) + self.floor_ratio


def make_scheduler(cfg: "RunConfig", optimizer: torch.optim.Optimizer, iterations: int) -> Any:
    """The run's schedule, stepped once per iteration: MultiStepLR at round(f · iterations) for f in
    ``lr_milestones`` (default), or the exponential policy."""
    if cfg.lr_policy == "exponential":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.LambdaLR(optimizer, ExponentialFactor(cfg.lr_gamma, cfg.lr_decay_every,
                                                                              cfg.lr_floor / lr))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones(iterations), gamma=cfg.lr_gamma)


# Training keeps every activation for backward, inference only a chunk at a time: per pixel, training
# needs several times the inference figure of the registry. 4x is a lower bound (measured: more for
# MSGNN), so a run this check refuses cannot fit; one it lets through may still not.
TRAIN_MEMORY_FACTOR = 4.0


def check_training_memory(spec: Any, run: "RunConfig", ctx: TaskContext) -> None:
    """ConfigError before any work when batch × crop² certainly does not fit the device's memory."""
    from derainkit.sysmem import available_memory

    per_rank = run.batch // max(1, ctx.world)
    need = TRAIN_MEMORY_FACTOR * spec.infer_bytes_per_pixel * per_rank * run.crop ** 2
    have = available_memory(ctx.device)
    if need > have:
        raise ConfigError(f"batch={run.batch} at crop={run.crop} needs at least {need / 2**30:.1f} GiB to train "
                          f"{run.model} on {ctx.device.type}, but {have / 2**30:.1f} GiB are available; lower batch "
                          "or crop (or train on more processes: the batch is split across them)")


class TrainingTask:
    """Base class: subclasses implement ``load_data``, ``build`` and ``step`` (see the module docstring)."""

    loss_names: tuple[str, ...] = ("loss",)  # what step() returns, in log-column order (train_<name>)
    static_graph: bool = True  # DDP: every step uses the same parameters (False: find unused ones each step)
    export_name: str = "model"
    train_root: Any = None  # where the training data came from (set by load_data; recorded in provenance)

    def __init__(self, ctx: TaskContext, config: Any) -> None:
        self.ctx, self.config, self.run = ctx, config, ctx.run
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.calls: dict[str, nn.Module] = {}  # what step() calls: the modules or their DDP/compiled wrappers

    # ------------------------------------------------------------------ to implement
    def load_data(self) -> tuple["BatchSource", int]:
        """(batch source, items per epoch); called first, before any RNG is seeded."""
        raise NotImplementedError

    def build(self) -> None:
        """Fill ``modules`` and ``optimizers`` (called after seeding: initialisation draws the torch RNG)."""
        raise NotImplementedError

    def step(self, batch: Mapping[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; named 0-d losses (detached), keys ``loss_names``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ defaults
    def build_schedulers(self, total: int) -> None:
        self.schedulers = {name: make_scheduler(self.run, opt, total) for name, opt in self.optimizers.items()}

    def optimizer_options(self, name: str) -> dict[str, Any]:
        """Hyperparameters of optimizer ``name`` from the run config; reapplied when a run continues from
        a checkpoint of a changed config (``allow_config_change``)."""
        return dict(lr=self.run.lr, betas=tuple(self.run.betas), eps=self.run.eps,
                    weight_decay=self.run.weight_decay)

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Set ``calls``: ``wrapper`` (DDP, compile) applied to each module that has trainable parameters."""
        self.calls = {name: wrapper(m) if any(p.requires_grad for p in m.parameters()) else m
                      for name, m in self.modules.items()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise CheckpointError(f"this task keeps no state, but the checkpoint has {sorted(state)}")

    def export_module(self) -> nn.Module:
        """What validation scores and the run exports: a network the model registry can rebuild."""
        return self.modules[self.export_name]

    def export_metadata(self) -> dict[str, Any]:
        """How the registry rebuilds the exported module: its model name and config."""
        from derainkit.train.config import canonical_model_config

        return {"model": self.run.model, "model_config": canonical_model_config(self.run.model, self.run.model_config)}

    def run_files(self) -> dict[str, Any]:
        """Extra JSON files (name -> content) written into the run folder at each (re)start."""
        return {}

    def manifests(self) -> dict[str, Sequence["Pair"]]:
        """Data manifests (file name -> pairs) written into the run folder; the first is the training set's."""
        return {}

    def build_network(self, spec: Any, config: Any) -> nn.Module:
        """``spec.build(config)`` with the run's ``init_weights``, on the device, in the run's memory format,
        after checking that its batch × crop² can fit in memory: the network a supervised task trains."""
        run = self.run
        model = spec.build(config)
        if run.init_weights:
            spec.load_weights(model, Path(run.init_weights))
        model = model.to(self.ctx.device)
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        check_training_memory(spec, run, self.ctx)
        return model.train()

    def allreduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the processes, for tasks that step several networks
        with several forward passes each (GANs) and so do not wrap them in DDP. A parameter without a
        gradient on this rank counts as zero, so every rank reduces the same tensors."""
        if self.ctx.world <= 1:
            return
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if params:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= self.ctx.world
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p))
                offset += n

    def grad_clip(self, module: nn.Module) -> None:
        """Clip ``module``'s global gradient norm to the run's ``grad_clip`` (if set)."""
        if self.run.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.run.grad_clip)
