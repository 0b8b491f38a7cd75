"""How long one training step of a run takes on this machine, measured: what a plan scales estimates by.

A stored record's wall time says what its own model config cost; a record of another config (a larger
patch, more sub-networks, stride 1) can cost several times more per step, and the work count of a plan
(iterations × batch × crop²) cannot see that. :func:`time_training_step` runs the run's own training task
(its model, model config, batch and crop; forward, loss, backward, optimiser) on the embedded training
set for a warm-up step and a few timed ones, so that two configs timed in the same process give the
ratio of their costs on this machine.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import TYPE_CHECKING, Any, Mapping

import torch

from derainkit.errors import ConfigError

if TYPE_CHECKING:
    from derainkit.train.config import RunConfig

# Tasks whose data is a paired training folder: the embedded training set stands in for the real one.
# (NLCL and UniRain read their own unpaired / typed folders, which a plan cannot assume are here.)
TIMABLE_TASKS = ("paired",)


def timing_config(run: Mapping[str, Any], device: str = "cpu") -> "RunConfig":
    """The :class:`RunConfig` to time for a stored run identity (a record spec's ``run``): the same model,
    model config, batch, crop, loss and optimiser, on the embedded training set, without validation; an
    exemplar policy other than ``none`` becomes ``random`` (the policy picks images, not work per step)."""
    from derainkit.train.config import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    d = {k: v for k, v in run.items() if k in names}
    d.update(train_data="embedded:train", val_data=None, device=device, init_weights=None, compile=False)
    if d.get("exemplar") not in (None, "none"):
        d["exemplar"] = "random"
    cfg = RunConfig.from_dict(d)
    if cfg.resolved_task not in TIMABLE_TASKS:
        raise ConfigError(f"a {cfg.resolved_task} run cannot be timed on the embedded set (timable: {TIMABLE_TASKS})")
    return cfg


def ready_task(cfg: "RunConfig", device: torch.device, amp_dtype: torch.dtype | None = None, seed: int = 66):
    """(task, batch source) for ``cfg``, built as the loop builds it and ready to ``step``: data loaded,
    the torch RNG seeded, modules and optimisers built, called unwrapped (no DDP, no compile)."""
    from derainkit.train.tasks import get_task
    from derainkit.train.tasks.base import TaskContext

    spec = get_task(cfg.resolved_task)
    task = spec.build(TaskContext(run=cfg, device=device, progress=False, amp_dtype=amp_dtype),
                      spec.config_from_dict(cfg.task_config))
    sampler, _ = task.load_data()
    torch.manual_seed(seed)
    task.build()
    task.calls = dict(task.modules)
    return task, sampler


def time_training_step(run: Mapping[str, Any], steps: int = 2, device: str = "cpu", seed: int = 66) -> float:
    """Median seconds of ``steps`` training steps (batch preparation included) after one untimed warm-up
    step, for the run identity ``run`` (see :func:`timing_config`). Raises ConfigError for a run whose
    task cannot be timed here."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, not {steps}")
    dev = torch.device(device)
    task, sampler = ready_task(timing_config(run, device), dev, seed=seed)
    seconds = []
    for it in range(1 + steps):
        t0 = time.perf_counter()
        task.step(sampler.batch(it), it)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if it:
            seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)
