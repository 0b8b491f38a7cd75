"""Training checkpoints: atomic, resumable, loadable with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only: the state of every module, optimizer
and scheduler the training task owns (by name), the task's own state (e.g. loss weights), the
iteration, every RNG state (torch, numpy, python, CUDA) stored as tensors/lists, the run config and
its hash. Writing goes to a temporary file in the same folder, is fsynced, then renamed over the
target with ``os.replace``: a crash mid-write leaves the previous checkpoint untouched and no
temporary file behind.

Format 2 (this one) holds ``modules``/``optimizers``/``schedulers`` dicts; format 1 (one ``model``,
``optimizer``, ``scheduler``, written before training tasks existed) is read as the paired task's
``model`` entries, so older runs still resume.

Final weights are exported by :mod:`derainkit.weights` (``.safetensors``, weights only, byte-stable);
``export_safetensors``/``read_exported``/``load_exported`` are re-exported here for older callers.
"""
from __future__ import annotations

import collections
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from derainkit.errors import CheckpointError
from derainkit.fsutil import atomic_path
from derainkit.weights import METADATA_KEY, export_safetensors, read_exported, state_of  # noqa: F401 (re-exported)
from derainkit.weights import unwrap as unwrap_model  # noqa: F401 (re-exported)

FORMAT = "derainkit-train-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
LATEST = "latest.pt"


# ---------------------------------------------------------------------------------------------------
# atomic file writes: derainkit.fsutil

def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    with atomic_path(path, durable=True) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    return Path(path)


def _atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link when possible (no second write)."""
    with atomic_path(dst, durable=True) as tmp:
        try:
            tmp.unlink()  # atomic_path made it; a hard link needs the name free
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)


# ---------------------------------------------------------------------------------------------------
# RNG states as weights_only-loadable values

def rng_state() -> dict[str, Any]:
    """Every RNG the training process uses, as tensors/lists/ints (no pickled objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": [int(x) for x in py_state], "gauss": py_gauss},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda[:torch.cuda.device_count()]])


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A scheduler's state_dict with the MultiStepLR milestone Counter as a plain dict (older torch
    versions refuse Counter under weights_only)."""
    state = dict(scheduler.state_dict())
    if isinstance(state.get("milestones"), collections.Counter):
        state["milestones"] = {int(k): int(v) for k, v in state["milestones"].items()}
    return state


def load_scheduler_state(scheduler: Any, state: Mapping[str, Any]) -> None:
    state = dict(state)
    if isinstance(state.get("milestones"), dict):
        state["milestones"] = collections.Counter(state["milestones"])
    scheduler.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# checkpoints

def save_checkpoint(folder: str | Path, state: Mapping[str, Any], iteration: int, keep_iteration: bool = False) -> Path:
    """Write ``<folder>/latest.pt`` atomically (and ``iter_<n>.pt`` beside it when ``keep_iteration``).

    ``state`` is what ``make_checkpoint`` built. Returns the path of ``latest.pt``.
    """
    folder = Path(folder)
    latest = atomic_torch_save(dict(state), folder / LATEST)
    if keep_iteration:
        _atomic_link_or_copy(latest, folder / f"iter_{int(iteration)}.pt")
    return latest


def make_checkpoint(*, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                    schedulers: Mapping[str, Any], iteration: int, total_iterations: int, model_name: str,
                    config: Mapping[str, Any], config_hash: str, task: str = "paired",
                    task_state: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (format 2): weights_only-loadable values only."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model_name,
        "task": task,
        "config": json.loads(json.dumps(dict(config))),
        "config_hash": config_hash,
        "iteration": int(iteration),
        "total_iterations": int(total_iterations),
        "modules": {name: state_of(m) for name, m in modules.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: scheduler_state(sch) for name, sch in schedulers.items()},
        "task_state": dict(task_state or {}),
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint (one model) in format-2 form: the paired task's ``model`` entries."""
    if state.get("version") == 1:
        state = dict(state)
        state["modules"] = {"model": state.pop("model")}
        state["optimizers"] = {"model": state.pop("optimizer")}
        state["schedulers"] = {"model": state.pop("scheduler")}
        state.setdefault("task", "paired")
        state.setdefault("task_state", {})
        extra = dict(state.get("extra") or {})
        if "loss_sum" in extra:
            extra["loss_sums"] = {"loss": extra.pop("loss_sum")}
        state["extra"] = extra
        state["version"] = VERSION
    return state


def load_checkpoint(path: str | Path, model_name: str | None = None, config_hash: str | None = None,
                    allow_config_change: bool = False, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``), checking it is one of ours for this run.

    ``path`` may be a checkpoint file, a ``checkpoints/`` folder or a run folder (its latest.pt is used).
    CheckpointError names the file when it is missing, unreadable, not a training checkpoint, from
    another model, or (unless ``allow_config_change``) from a run with another config hash; ``config``
    (the current run config as a dict) only serves to name the keys that differ.
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: cannot be read as a training checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a derainkit training checkpoint (for weights, use the model's "
                              "loader or load_exported)")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')}, this kit reads "
                              f"{list(READABLE_VERSIONS)}")
    state = _upgrade(dict(state))
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(f"{path}: checkpoint of model {state['model_name']!r}, but this run trains "
                              f"{model_name!r}")
    if config_hash is not None and state["config_hash"] != config_hash and not allow_config_change:
        changed = ""
        if config is not None:
            theirs = state.get("config") or {}
            changed = ", ".join(sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k)))
        raise CheckpointError(
            f"{path}: checkpoint of run config {state['config_hash']}, but the config given hashes to "
            f"{config_hash}{f' (differs in: {changed})' if changed else ''}; resume with the run's own "
            "config.yaml, or allow the change explicitly (--allow-config-change)")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file, a checkpoints/ folder, or a run folder."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / LATEST, path / LATEST):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no checkpoint found (looked for checkpoints/{LATEST} and {LATEST})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return path


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model, metadata) of a kit ``.safetensors`` export (see :func:`derainkit.models.load_exported`)."""
    from derainkit.models import load_exported as _load

    return _load(path, device)
