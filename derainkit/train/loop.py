"""The training loop: `train(cfg) -> RunResult`, resumable bit-for-bit, single process or torchrun DDP.

A run lives in ``<out_dir>/<config hash>/``::

    config.yaml          the RunConfig (load it back with RunConfig.from_file)
    provenance.json      commit, device, library versions, data digest; one entry per (re)start
    exemplars.json       which exemplar each training pair got (the policy's table or rule)
    train_manifest.csv   the training files and their sha256
    log.csv              iteration, epoch, lr, train loss (mean since the previous row), validation
                         metrics per protocol, wall seconds
    checkpoints/         latest.pt, iter_<n>.pt (every checkpoint_every iterations)
    run.json             status: iterations done, last metrics, where the weights are
    model.safetensors    final weights + metadata (written when the run finishes)

Exact resume: samples are a pure function of (seed, iteration, slot) (see ``train.dataset``), and a
checkpoint holds the model, optimizer and scheduler state, the iteration, every RNG state and the
running loss sum of the current log interval. A run interrupted after any checkpoint and resumed ends
with bit-identical weights and optimizer state (given the same device and library versions; on CUDA
also ``deterministic: true``).

Schedule: MultiStepLR stepped once per iteration after ``optimizer.step()``, with milestones
round(f · iterations): iterations [0, m1) run at lr, [m1, m2) at lr·γ, and so on. (The official code
steps the scheduler at the top of its loop, so each drop there comes one iteration earlier.)

Multi-GPU: launched under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(nccl on CUDA, gloo on CPU). Rank r takes slots r, r+W, r+2W, ... of each global batch from the same
pure-function sampler, so the global batch does not depend on the world size (batch must be divisible
by it). Only rank 0 validates and writes files.
"""
from __future__ import annotations

import contextlib
import csv
import inspect
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import yaml
from tqdm.auto import tqdm

from derainkit.errors import CheckpointError, ConfigError, DatasetError, DerainkitError
from derainkit.fsutil import atomic_path, atomic_write_text
from derainkit.losses import get_loss
from derainkit.train.checkpoint import (
    LATEST,
    export_safetensors,
    load_checkpoint,
    load_scheduler_state,
    make_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from derainkit.train.config import RunConfig, canonical_model_config
from derainkit.train.dataset import PairSampler, TrainingSet, iterate_batches, resolve_data_path


@dataclass
class RunResult:
    run_dir: Path
    config_hash: str
    iteration: int  # iterations completed
    total_iterations: int
    finished: bool
    checkpoint: Optional[Path]
    weights: Optional[Path]  # model.safetensors once finished
    log: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # last validation: protocol -> psnr/ssim
    input_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # rainy inputs themselves
    device: str = "cpu"
    precision: str = "fp32"  # what was used (bf16 falls back to fp32 off CUDA)
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("run_dir", "checkpoint", "weights", "log"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


# ---------------------------------------------------------------------------------------------------
# set-up helpers

@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return _Dist(dist.get_world_size(), dist.get_rank(), local, False)
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_world_size(), dist.get_rank(), local, True)


def _device(cfg: RunConfig, d: _Dist) -> torch.device:
    from derainkit.infer import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def model_uses_exemplar(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes an ``exemplar`` and its config has the exemplar branch on."""
    try:
        params = inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False
    if "exemplar" not in params:
        return False
    cfg = getattr(unwrap_model(model), "config", None)
    branches = getattr(cfg, "branches", None)
    if branches is not None:
        return "exemplar" in branches
    flag = getattr(cfg, "exemplar", None)
    return flag if isinstance(flag, bool) else True


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    kw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **kw)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    raise ConfigError(f"optimizer={cfg.optimizer!r} is invalid")  # pragma: no cover - validated by RunConfig


def make_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, iterations: int):
    """MultiStepLR at round(f · iterations) for f in ``lr_milestones``, stepped once per iteration."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones(iterations), gamma=cfg.lr_gamma)


def train_step(fwd: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               loss_fn, device: torch.device, amp=None, uses_exemplar: bool = False, channels_last: bool = False,
               grad_clip: float | None = None) -> torch.Tensor:
    """One optimisation step on ``batch`` (from ``PairSampler.batch``); returns the loss (a 0-d tensor).

    ``fwd`` is what is called (the model, or its DDP/compiled wrapper); ``model`` the bare module whose
    parameters are clipped. The loss is computed in fp32 outside autocast.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rainy = batch["rainy"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    clean = batch["clean"].to(device, non_blocking=True)
    with amp if amp is not None else contextlib.nullcontext():
        if uses_exemplar:
            ex = batch["exemplar"].to(device, non_blocking=True).contiguous(memory_format=fmt)
            pred = fwd(rainy, exemplar=ex)
        else:
            pred = fwd(rainy)
    loss = loss_fn(pred, clean)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------------------------------------
# validation

class _Validator:
    """Scores the model on the validation pairs (held in memory) under each protocol."""

    def __init__(self, cfg: RunConfig, device: torch.device, progress: bool) -> None:
        from derainkit.data import discover_pairs, load_pair
        from derainkit.metrics.protocols import score

        root = resolve_data_path(cfg.val_data)
        pairs = discover_pairs(root, layout=cfg.val_layout, clean_side=cfg.clean_side)
        if cfg.val_limit:
            pairs = pairs[: cfg.val_limit]
        missing = [p.id for p in pairs if p.clean is None]
        if not pairs or missing:
            raise DatasetError(f"{root}: validation needs clean images; {len(missing)} of {len(pairs)} have none")
        self.root, self.pairs, self.device, self.protocols = root, pairs, device, list(cfg.val_protocols)
        self.images = [load_pair(p) for p in pairs]
        self.progress = progress
        self._score = score
        self.input_metrics = self._means([[score(r, c, proto, quantize="round") for r, c in self.images]
                                          for proto in self.protocols])

    def _means(self, per_proto: list[list]) -> dict[str, dict[str, float]]:
        out = {}
        for proto, scores in zip(self.protocols, per_proto):
            ps = [s.psnr for s in scores if math.isfinite(s.psnr)]
            out[proto] = {"psnr": float(np.mean(ps)) if ps else float("nan"),
                          "ssim": float(np.mean([s.ssim for s in scores]))}
        return out

    @torch.no_grad()
    def __call__(self, model: nn.Module, channels_last: bool) -> dict[str, dict[str, float]]:
        from derainkit.io import image_to_tensor, tensor_to_image

        was_training = model.training
        model.eval()
        per_proto: list[list] = [[] for _ in self.protocols]
        try:
            for (rainy, clean) in tqdm(self.images, desc="validate", unit="img", leave=False,
                                       disable=not self.progress):
                x = image_to_tensor(rainy).to(self.device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # fp32 and the model's own exemplar default (MSGNN: the input itself, as the official
                # test-time pairing on a sorted listing), so numbers compare across runs.
                pred = tensor_to_image(model(x))
                for k, proto in enumerate(self.protocols):
                    per_proto[k].append(self._score(pred, clean, proto, quantize="round"))
        finally:
            model.train(was_training)
        return self._means(per_proto)


# ---------------------------------------------------------------------------------------------------
# the log

def _log_columns(protocols: list[str]) -> list[str]:
    cols = ["iteration", "epoch", "lr", "train_loss"]
    for p in protocols:
        cols += [f"{p}/psnr", f"{p}/ssim"]
    return cols + ["seconds"]


def _prepare_log(path: Path, columns: list[str], resume_iteration: int) -> None:
    """Fresh log with a header, or on resume the old log cut back to the checkpoint's iteration (rows a
    crashed run wrote after its last checkpoint are written again by the resumed run)."""
    rows: list[dict] = []
    if resume_iteration > 0 and path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("iteration") and int(r["iteration"]) <= resume_iteration]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _append_log(path: Path, columns: list[str], row: dict) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore").writerow(row)


# ---------------------------------------------------------------------------------------------------
# the run

def train(cfg: RunConfig, resume: bool | str | os.PathLike = False, progress: bool = True,
          max_iterations_this_call: int | None = None, allow_config_change: bool = False) -> RunResult:
    """Train ``cfg`` into ``cfg.run_dir()`` (or continue it) and return where everything went.

    ``resume``: False starts a new run (an existing run folder with a checkpoint is an error, to avoid
    overwriting it); True continues ``cfg.run_dir()`` from its latest checkpoint; a path (run folder or
    checkpoint file) continues from there. A checkpoint of another model is refused; one of another
    config hash too, unless ``allow_config_change`` (then a new run folder for the new config starts
    from that checkpoint's state, and the change is recorded). ``max_iterations_this_call`` stops after
    that many iterations, writing a checkpoint first (an interruption you can resume).
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train() expects a RunConfig, got {type(cfg).__name__}")
    if max_iterations_this_call is not None and max_iterations_this_call < 1:
        raise ConfigError(f"max_iterations_this_call={max_iterations_this_call} must be >= 1")
    dist_info = _init_distributed(cfg.device)
    try:
        return _Run(cfg, dist_info, progress).run(resume, max_iterations_this_call, allow_config_change)
    finally:
        if dist_info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Run:
    def __init__(self, cfg: RunConfig, d: _Dist, progress: bool) -> None:
        from derainkit.models import get_model_spec

        self.cfg, self.d = cfg, d
        self.progress = progress and d.main
        self.spec = get_model_spec(cfg.model)
        self.loss_fn = get_loss(cfg.loss)
        self.hash = cfg.config_hash()
        self.device = _device(cfg, d)
        self.notes: list[str] = []
        self.amp_dtype: Optional[torch.dtype] = None
        self.precision = "fp32"
        if cfg.precision == "bf16":
            if self.device.type == "cuda":
                self.amp_dtype, self.precision = torch.bfloat16, "bf16"
            else:
                note = f"precision bf16 needs CUDA; training on {self.device.type} in fp32 instead"
                warnings.warn(note, stacklevel=3)
                self.notes.append(note)
        if cfg.batch % d.world:
            raise ConfigError(f"batch={cfg.batch} must be divisible by the number of processes ({d.world}) so every "
                              "rank takes the same number of slots of the global batch")
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    # -------------------------------------------------------------- pieces
    def _build_model(self) -> nn.Module:
        cfg, spec = self.cfg, self.spec
        model = spec.build(spec.config_from_dict(dict(cfg.model_config)))
        if cfg.init_weights:
            spec.load_weights(model, Path(cfg.init_weights))
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.train()

    def _resolve_run(self, resume) -> tuple[Path, Optional[dict], Optional[Path]]:
        """(run folder, checkpoint state or None, checkpoint path)."""
        cfg = self.cfg
        own = cfg.run_dir()
        if resume is False or resume is None:
            latest = own / "checkpoints" / LATEST
            if latest.is_file():
                raise DerainkitError(f"{own} already holds this run (checkpoints/{LATEST}); resume it "
                                     "(resume=True / --resume) or delete the folder to start over")
            return own, None, None
        ckpt = own / "checkpoints" / LATEST if resume is True else resolve_checkpoint(resume)
        if resume is True and not ckpt.is_file():
            raise CheckpointError(f"{own}: nothing to resume (no checkpoints/{LATEST}); start the run without resume")
        state = load_checkpoint(ckpt, model_name=cfg.model, config_hash=self.hash,
                                allow_config_change=self._allow_change, config=cfg.to_dict())
        if state["config_hash"] != self.hash:
            self.notes.append(f"started from {ckpt} (run config {state['config_hash']}) with a changed config")
            return own, state, ckpt
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run_dir, state, ckpt

    # -------------------------------------------------------------- main
    def run(self, resume, max_iterations: Optional[int], allow_config_change: bool) -> RunResult:
        cfg, d = self.cfg, self.d
        self._allow_change = allow_config_change
        main = d.main
        data = TrainingSet.load(cfg.train_data, cfg.layout, cfg.clean_side, progress=self.progress)
        total = cfg.total_iterations(len(data))
        run_dir, state, ckpt_path = self._resolve_run(resume)
        ckpt_dir = run_dir / "checkpoints"

        _seed_everything(cfg.seed)
        model = self._build_model()
        uses_exemplar = model_uses_exemplar(model)
        min_input_side = getattr(getattr(model, "module", model), "min_input_side", None)
        side = min_input_side() if min_input_side is not None else 1
        if cfg.crop < side:
            raise ConfigError(f"crop={cfg.crop} is smaller than model {cfg.model!r} with this model_config can "
                              f"process (at least {side}×{side} px: k, patch size and stride need "
                              "enough graph patches at every scale); raise crop")
        if cfg.exemplar == "none" and uses_exemplar:
            raise ConfigError(f"exemplar='none' but model {cfg.model!r} has its exemplar branch on (it would fall "
                              "back to the input itself); set model_config.exemplar=false or pick another policy")
        if not uses_exemplar and cfg.exemplar != "none":
            self.notes.append(f"model {cfg.model!r} takes no exemplar: exemplar policy {cfg.exemplar!r} unused")
        sampler = PairSampler(data, cfg.crop, cfg.batch, cfg.seed, cfg.exemplar if uses_exemplar else "none")
        optimizer = make_optimizer(cfg, model.parameters())
        scheduler = make_scheduler(cfg, optimizer, total)

        start, extra = 0, {}
        if state is not None:
            start, extra = self._restore(state, model, optimizer, total)
            if state["config_hash"] != self.hash:
                scheduler = self._fast_forward_scheduler(optimizer, total, start)
            else:
                load_scheduler_state(scheduler, state["scheduler"])
            set_rng_state(state["rng"])

        validator = _Validator(cfg, self.device, self.progress) if (cfg.val_data is not None and main) else None
        columns = _log_columns(list(cfg.val_protocols) if cfg.val_data is not None else [])
        log_path = run_dir / "log.csv"
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files(run_dir, data, sampler, total, start, ckpt_path, uses_exemplar)
            _prepare_log(log_path, columns, start)
        input_metrics = validator.input_metrics if validator is not None else {}

        fwd: nn.Module = model
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # static_graph: the same parameters are used every iteration, and some never are (MSGNN's
            # frozen embeddings and the modules the code variant keeps only for checkpoint compatibility);
            # DDP then reduces the used ones without searching the graph each step.
            fwd = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                      static_graph=True)
        if cfg.compile:
            fwd = torch.compile(fwd)

        stop = total if max_iterations is None else min(total, start + max_iterations)
        slots = list(range(d.rank, cfg.batch, d.world))
        loss_sum, loss_n = float(extra.get("loss_sum", 0.0)), int(extra.get("loss_n", 0))
        elapsed0 = float(extra.get("elapsed", 0.0))
        metrics: dict = extra.get("metrics") or {}
        t0 = time.perf_counter()
        checkpoint: Optional[Path] = ckpt_path
        amp = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        bar = tqdm(total=total, initial=start, desc=f"train {cfg.model} {self.hash}", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        batches = iterate_batches(sampler, start, stop, slots, with_exemplar=uses_exemplar,
                                  num_workers=cfg.num_workers)
        try:
            for it, batch in zip(range(start, stop), batches):
                lr = optimizer.param_groups[0]["lr"]
                loss = self._step(fwd, model, optimizer, batch, amp, uses_exemplar, it)
                scheduler.step()
                loss_sum += loss
                loss_n += 1
                done = it + 1
                bar.update(1)
                if done % 10 == 0 or done == stop:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                # Decided from the config alone, so every rank agrees (they meet at the barrier below).
                val_due = cfg.val_data is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == total)
                log_due = (cfg.log_every and done % cfg.log_every == 0) or done == total or val_due
                if log_due:
                    row = {"iteration": done, "epoch": round(sampler.epoch_of(done), 4), "lr": lr,
                           "train_loss": loss_sum / max(1, loss_n),
                           "seconds": round(elapsed0 + time.perf_counter() - t0, 2)}
                    if val_due and validator is not None:
                        metrics = validator(model, cfg.channels_last)
                        for proto, m in metrics.items():
                            row[f"{proto}/psnr"], row[f"{proto}/ssim"] = m["psnr"], m["ssim"]
                    if main:
                        _append_log(log_path, columns, row)
                    loss_sum, loss_n = 0.0, 0
                    if val_due:
                        self._barrier()  # the other ranks wait while rank 0 validates
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == stop:
                    extra = {"loss_sum": loss_sum, "loss_n": loss_n, "metrics": metrics,
                             "elapsed": elapsed0 + time.perf_counter() - t0, "input_metrics": input_metrics}
                    if main:
                        state = make_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, iteration=done,
                                                total_iterations=total, model_name=cfg.model, config=cfg.to_dict(),
                                                config_hash=self.hash, extra=extra)
                        keep = bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                        checkpoint = save_checkpoint(ckpt_dir, state, done, keep_iteration=keep)
                        self._write_status(run_dir, done, total, metrics, input_metrics, None)
                    self._barrier()
        finally:
            bar.close()
        done = stop
        finished = done >= total
        weights = None
        if finished and main:
            weights = run_dir / "model.safetensors"
            if stop > start or not weights.is_file():
                from derainkit.provenance import git_commit

                export_safetensors(model, weights, {
                    "model": cfg.model, "model_config": canonical_model_config(cfg.model, cfg.model_config),
                    "config_hash": self.hash, "commit": git_commit(), "iterations": total,
                    "metric": metrics, "input_metric": input_metrics, "run_config": cfg.to_dict()})
            self._write_status(run_dir, done, total, metrics, input_metrics, weights)
        self._barrier()
        return RunResult(run_dir=run_dir, config_hash=self.hash, iteration=done, total_iterations=total,
                         finished=finished, checkpoint=checkpoint, weights=weights, log=log_path, metrics=metrics,
                         input_metrics=input_metrics, device=str(self.device), precision=self.precision,
                         world_size=d.world)

    def _step(self, fwd: nn.Module, model: nn.Module, optimizer, batch: dict, amp, uses_exemplar: bool,
              it: int) -> float:
        loss = train_step(fwd, model, optimizer, batch, self.loss_fn, self.device, amp=amp,
                          uses_exemplar=uses_exemplar, channels_last=self.cfg.channels_last,
                          grad_clip=self.cfg.grad_clip)
        value = loss.detach()
        if self.d.world > 1:
            # The logged loss is the global batch's (mean of the equal-sized rank shares), on every rank,
            # so checkpoints from rank 0 carry the full running sum.
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.d.world
        v = float(value)
        if not math.isfinite(v):
            raise DerainkitError(f"iteration {it}: training loss is {v}; lower lr (now "
                                 f"{optimizer.param_groups[0]['lr']:.2e}) or set grad_clip")
        return v

    def _restore(self, state: dict, model: nn.Module, optimizer, total: int) -> tuple[int, dict]:
        path_note = f"checkpoint of run {state['config_hash']}"
        try:
            unwrap_model(model).load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path_note}: weights do not fit {self.cfg.model} "
                                  f"{self.cfg.model_config}: {str(exc).splitlines()[0]}") from None
        optimizer.load_state_dict(state["optimizer"])
        if state["config_hash"] != self.hash:
            # A deliberate config change: the optimizer's hyperparameters come from the new config.
            for g in optimizer.param_groups:
                g.update(lr=self.cfg.lr, initial_lr=self.cfg.lr, betas=tuple(self.cfg.betas), eps=self.cfg.eps,
                         weight_decay=self.cfg.weight_decay)
        elif state["total_iterations"] != total:
            raise CheckpointError(f"{path_note}: planned {state['total_iterations']} iterations, this run "
                                  f"{total} (the training data changed?)")
        start = int(state["iteration"])
        if start > total:
            raise CheckpointError(f"{path_note}: at iteration {start}, beyond this run's {total}")
        return start, dict(state.get("extra") or {})

    def _fast_forward_scheduler(self, optimizer, total: int, start: int):
        scheduler = make_scheduler(self.cfg, optimizer, total)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _ in range(start):
                scheduler.step()
        return scheduler

    def _barrier(self) -> None:
        if self.d.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # -------------------------------------------------------------- files
    def _write_run_files(self, run_dir: Path, data: TrainingSet, sampler: PairSampler, total: int, start: int,
                         ckpt_path: Optional[Path], uses_exemplar: bool) -> None:
        from derainkit.data import write_manifest
        from derainkit.provenance import provenance

        cfg = self.cfg
        header = f"# derainkit run config {self.hash} (RunConfig.from_file reads this file)\n"
        atomic_write_text(run_dir / "config.yaml", header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        digest = write_manifest(data.pairs, run_dir / "train_manifest.csv") \
            if all(p.layout != "memory" for p in data.pairs) else None
        report = sampler.exemplar_report()
        report["model_uses_exemplar"] = uses_exemplar
        atomic_write_text(run_dir / "exemplars.json", json.dumps(report, indent=1) + "\n")
        entry = {**provenance(self.device), "start_iteration": start, "total_iterations": total,
                 "train_pairs": len(data), "train_root": str(data.root), "train_manifest_sha256": digest,
                 "world_size": self.d.world, "precision": self.precision, "notes": list(self.notes),
                 "resumed_from": str(ckpt_path) if ckpt_path else None, "milestones": cfg.milestones(total),
                 "run_epochs": total * cfg.batch / len(data)}
        prov_path = run_dir / "provenance.json"
        history = []
        if start > 0 and prov_path.is_file():
            try:
                history = json.loads(prov_path.read_text()).get("starts", [])
            except (json.JSONDecodeError, AttributeError):
                history = []
        atomic_write_text(prov_path, json.dumps({"config_hash": self.hash, "starts": history + [entry]}, indent=1,
                                           default=str) + "\n")

    def _write_status(self, run_dir: Path, done: int, total: int, metrics: dict, input_metrics: dict,
                      weights: Optional[Path]) -> None:
        status = {"config_hash": self.hash, "model": self.cfg.model, "iteration": done, "total_iterations": total,
                  "finished": done >= total, "metrics": metrics, "input_metrics": input_metrics,
                  "weights": str(weights) if weights else None, "precision": self.precision,
                  "device": str(self.device), "world_size": self.d.world, "notes": self.notes}
        atomic_write_text(run_dir / "run.json", json.dumps(status, indent=1, default=str) + "\n")
