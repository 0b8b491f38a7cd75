"""The training loop: `train(cfg) -> RunResult`, resumable bit-for-bit, single process or torchrun DDP.

The loop is the same for every model family; what differs (data, modules, optimizers, the step, extra
state) is the run's *training task* (:mod:`derainkit.train.tasks`, e.g. ``paired``). A run lives in
``<out_dir>/<config hash>/``::

    config.yaml          the RunConfig (load it back with RunConfig.from_file)
    provenance.json      commit, device, library versions, data digest; one entry per (re)start
    exemplars.json ...   files the task adds (the paired task: which exemplar each training pair got)
    train_manifest.csv   the training files and their sha256
    log.csv              iteration, epoch, lr, one train_<name> column per named loss of the task (mean
                         since the previous row), validation metrics per protocol, wall seconds
    checkpoints/         latest.pt, iter_<n>.pt (every checkpoint_every iterations)
    run.json             status: iterations done, last metrics, where the weights are
    model.safetensors    final weights of the task's export module + metadata (when the run finishes)

Exact resume: samples are a pure function of (seed, iteration, slot) (see ``train.dataset``), and a
checkpoint holds every module, optimizer and scheduler of the task, the task's own state, the
iteration, every RNG state and the running loss sums of the current log interval. A run interrupted
after any checkpoint and resumed ends with bit-identical weights and optimizer state (given the same
device and library versions; on CUDA also ``deterministic: true``).

Schedule: MultiStepLR stepped once per iteration after the optimizer steps, with milestones
round(f · iterations): iterations [0, m1) run at lr, [m1, m2) at lr·γ, and so on. (The official code
steps the scheduler at the top of its loop, so each drop there comes one iteration earlier.)

Validation scores the task's export module exactly as ``derainkit evaluate`` would (the model's own
quantisation rule, the same tiling planner, :func:`derainkit.metrics.evaluate.score_image`), so a
logged figure equals a later ``evaluate`` of the exported weights on the same images.

Multi-GPU: launched under torchrun (WORLD_SIZE > 1) each trained module is wrapped in
DistributedDataParallel (nccl on CUDA, gloo on CPU; ``static_graph`` when the task says every step uses
the same parameters, otherwise unused ones are searched for). Rank r takes slots r, r+W, r+2W, ... of
each global batch from the same pure-function sampler, so the global batch does not depend on the
world size (batch must be divisible by it). Only rank 0 validates and writes files.
"""
from __future__ import annotations

import csv
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
from derainkit.train.checkpoint import (
    LATEST,
    export_safetensors,
    load_checkpoint,
    load_scheduler_state,
    make_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from derainkit.train.config import NOT_IN_HASH, RunConfig
from derainkit.train.dataset import iterate_batches, resolve_data_path
from derainkit.train.tasks import get_task
from derainkit.train.tasks.base import TaskContext, TrainingTask, make_optimizer, make_scheduler  # noqa: F401


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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------------------------------------
# validation

class _Validator:
    """Scores a module on the validation pairs (held in memory) as ``evaluate`` would, per protocol."""

    def __init__(self, cfg: RunConfig, device: torch.device, progress: bool) -> None:
        from derainkit.data import discover_pairs, load_pair
        from derainkit.metrics.evaluate import mean_scores, score_image
        from derainkit.models import get_model_spec

        root = resolve_data_path(cfg.val_data)
        pairs = discover_pairs(root, layout=cfg.val_layout, clean_side=cfg.clean_side)
        if cfg.val_limit:
            pairs = pairs[: cfg.val_limit]
        missing = [p.id for p in pairs if p.clean is None]
        if not pairs or missing:
            raise DatasetError(f"{root}: validation needs clean images; {len(missing)} of {len(pairs)} have none")
        self.spec = get_model_spec(cfg.model)
        self.pairs, self.device, self.protocols, self.progress = pairs, device, list(cfg.val_protocols), progress
        self.images = [load_pair(p) for p in pairs]
        self._score, self._means = score_image, mean_scores
        inputs = self._means([score_image(r, r, c, self.protocols, "round", p.rainy)
                              for p, (r, c) in zip(pairs, self.images)], self.protocols)
        self.input_metrics = {k: {"psnr": m["input_psnr"], "ssim": m["input_ssim"]} for k, m in inputs.items()}

    def __call__(self, module: nn.Module) -> dict[str, dict[str, float]]:
        from derainkit.infer import Predictor

        was_training = module.training
        predictor = Predictor(module, self.spec.infer_bytes_per_pixel, device=self.device)
        rows = []
        try:
            for pair, (rainy, clean) in tqdm(list(zip(self.pairs, self.images)), desc="validate", unit="img",
                                             leave=False, disable=not self.progress):
                pred, _plan = predictor(rainy)  # fp32; MSGNN: the input itself as exemplar (its default)
                rows.append(self._score(pred, rainy, clean, self.protocols, self.spec.official_quantize, pair.rainy))
        finally:
            module.train(was_training)
        return {k: {"psnr": m["psnr"], "ssim": m["ssim"]} for k, m in self._means(rows, self.protocols).items()}


# ---------------------------------------------------------------------------------------------------
# the log

def _log_columns(loss_names: tuple[str, ...], protocols: list[str]) -> list[str]:
    cols = ["iteration", "epoch", "lr"] + [f"train_{n}" for n in loss_names]
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


@dataclass
class _Progress:
    """What the loop carries between iterations and through checkpoints."""

    loss_sums: dict[str, float]
    loss_n: int = 0
    elapsed0: float = 0.0
    metrics: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def extra(self, input_metrics: dict) -> dict[str, Any]:
        return {"loss_sums": dict(self.loss_sums), "loss_n": self.loss_n, "metrics": self.metrics,
                "elapsed": self.elapsed(), "input_metrics": input_metrics}


class _Run:
    def __init__(self, cfg: RunConfig, d: _Dist, progress: bool) -> None:
        self.cfg, self.d = cfg, d
        self.progress = progress and d.main
        self.task_spec = get_task(cfg.resolved_task)
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

    # -------------------------------------------------------------- main
    def run(self, resume, max_iterations: Optional[int], allow_config_change: bool) -> RunResult:
        cfg, d = self.cfg, self.d
        ctx = TaskContext(run=cfg, device=self.device, world=d.world, rank=d.rank, progress=self.progress,
                          amp_dtype=self.amp_dtype, notes=self.notes)
        task: TrainingTask = self.task_spec.build(ctx, self.task_spec.config_from_dict(dict(cfg.task_config)))
        sampler, n_items = task.load_data()
        total = cfg.total_iterations(n_items)
        run_dir, state, ckpt_path = self._resolve_run(resume, allow_config_change)
        _seed_everything(cfg.seed)
        task.build()
        task.build_schedulers(total)
        start, extra = self._restore(task, state, total) if state is not None else (0, {})
        validator = _Validator(cfg, self.device, self.progress) if (cfg.val_data is not None and d.main) else None
        columns = _log_columns(task.loss_names, list(cfg.val_protocols) if cfg.val_data is not None else [])
        if d.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_files(run_dir, task, n_items, total, start, ckpt_path)
            _prepare_log(run_dir / "log.csv", columns, start)
        self._wrap(task)
        stop = total if max_iterations is None else min(total, start + max_iterations)
        sums = extra.get("loss_sums") or {}
        prog = _Progress(loss_sums={n: float(sums.get(n, 0.0)) for n in task.loss_names},
                         loss_n=int(extra.get("loss_n", 0)), elapsed0=float(extra.get("elapsed", 0.0)),
                         metrics=extra.get("metrics") or {})
        input_metrics = validator.input_metrics if validator is not None else {}
        checkpoint = self._iterate(task, sampler, start, stop, total, prog, validator, run_dir, columns,
                                   input_metrics) or ckpt_path
        return self._finish(task, run_dir, start, stop, total, prog.metrics, input_metrics, checkpoint)

    def _iterate(self, task: TrainingTask, sampler, start: int, stop: int, total: int, prog: _Progress,
                 validator: Optional[_Validator], run_dir: Path, columns: list[str],
                 input_metrics: dict) -> Optional[Path]:
        cfg = self.cfg
        checkpoint = None
        first_optimizer = next(iter(task.optimizers.values()))
        bar = tqdm(total=total, initial=start, desc=f"train {cfg.model} {self.hash}", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        batches = iterate_batches(sampler, start, stop, list(range(self.d.rank, cfg.batch, self.d.world)),
                                  num_workers=cfg.num_workers)
        try:
            for it, batch in zip(range(start, stop), batches):
                lr = first_optimizer.param_groups[0]["lr"]
                losses = self._step(task, batch, it)
                for scheduler in task.schedulers.values():
                    scheduler.step()
                for name, value in losses.items():
                    prog.loss_sums[name] += value
                prog.loss_n += 1
                done = it + 1
                bar.update(1)
                if done % 10 == 0 or done == stop:
                    bar.set_postfix({**{n: f"{v:.4f}" for n, v in losses.items()}, "lr": f"{lr:.2e}"})
                self._log_and_validate(task, sampler, done, total, lr, prog, validator, run_dir, columns)
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == stop:
                    checkpoint = self._checkpoint(task, run_dir, done, total, prog, input_metrics) or checkpoint
        finally:
            bar.close()
        return checkpoint

    def _log_and_validate(self, task: TrainingTask, sampler, done: int, total: int, lr: float, prog: _Progress,
                          validator: Optional[_Validator], run_dir: Path, columns: list[str]) -> None:
        cfg = self.cfg
        # Decided from the config alone, so every rank agrees (they meet at the barrier below).
        val_due = cfg.val_data is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == total)
        log_due = (cfg.log_every and done % cfg.log_every == 0) or done == total or val_due
        if not log_due:
            return
        row = {"iteration": done, "epoch": round(sampler.epoch_of(done), 4), "lr": lr,
               "seconds": round(prog.elapsed(), 2)}
        row.update({f"train_{n}": s / max(1, prog.loss_n) for n, s in prog.loss_sums.items()})
        if val_due and validator is not None:
            prog.metrics = validator(task.export_module())
            for proto, m in prog.metrics.items():
                row[f"{proto}/psnr"], row[f"{proto}/ssim"] = m["psnr"], m["ssim"]
        if self.d.main:
            _append_log(run_dir / "log.csv", columns, row)
        prog.loss_sums = {n: 0.0 for n in prog.loss_sums}
        prog.loss_n = 0
        if val_due:
            self._barrier()  # the other ranks wait while rank 0 validates

    def _checkpoint(self, task: TrainingTask, run_dir: Path, done: int, total: int, prog: _Progress,
                    input_metrics: dict) -> Optional[Path]:
        path = None
        if self.d.main:
            cfg = self.cfg
            state = make_checkpoint(modules=task.modules, optimizers=task.optimizers, schedulers=task.schedulers,
                                    iteration=done, total_iterations=total, model_name=cfg.model,
                                    config=cfg.to_dict(), config_hash=self.hash, task=cfg.resolved_task,
                                    task_state=task.state_dict(), extra=prog.extra(input_metrics))
            keep = bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
            path = save_checkpoint(run_dir / "checkpoints", state, done, keep_iteration=keep)
            self._write_status(run_dir, done, total, prog.metrics, input_metrics, None)
        self._barrier()
        return path

    def _finish(self, task: TrainingTask, run_dir: Path, start: int, stop: int, total: int, metrics: dict,
                input_metrics: dict, checkpoint: Optional[Path]) -> RunResult:
        finished = stop >= total
        weights = None
        if finished and self.d.main:
            weights = run_dir / "model.safetensors"
            if stop > start or not weights.is_file():
                from derainkit.provenance import git_commit

                # Only what defines the run (not where it was written): identical runs export identical bytes.
                run_config = {k: v for k, v in self.cfg.to_dict().items() if k not in NOT_IN_HASH}
                export_safetensors(task.export_module(), weights, {
                    **task.export_metadata(), "task": self.cfg.resolved_task, "config_hash": self.hash,
                    "commit": git_commit(), "iterations": total, "metric": metrics, "input_metric": input_metrics,
                    "run_config": run_config})
            self._write_status(run_dir, stop, total, metrics, input_metrics, weights)
        self._barrier()
        return RunResult(run_dir=run_dir, config_hash=self.hash, iteration=stop, total_iterations=total,
                         finished=finished, checkpoint=checkpoint, weights=weights, log=run_dir / "log.csv",
                         metrics=metrics, input_metrics=input_metrics, device=str(self.device),
                         precision=self.precision, world_size=self.d.world)

    # -------------------------------------------------------------- pieces
    def _wrap(self, task: TrainingTask) -> None:
        """DDP (multi-process) and torch.compile around each module the task trains."""
        d, cfg = self.d, self.cfg

        def wrapper(module: nn.Module) -> nn.Module:
            fwd = module
            if d.world > 1:
                from torch.nn.parallel import DistributedDataParallel as DDP

                # static_graph: the same parameters are used every iteration, and some never are (MSGNN's
                # frozen embeddings and the modules the code variant keeps only for checkpoint compatibility);
                # DDP then reduces the used ones without searching the graph each step. Tasks whose steps
                # use different parameters (routing, alternating G/D steps) search for the unused ones.
                fwd = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          static_graph=task.static_graph, find_unused_parameters=not task.static_graph)
            return torch.compile(fwd) if cfg.compile else fwd

        task.wrap(wrapper)

    def _step(self, task: TrainingTask, batch: dict, it: int) -> dict[str, float]:
        losses = task.step(batch, it)
        names = list(losses)
        values = torch.stack([losses[n].detach().float().reshape(()) for n in names])
        if self.d.world > 1:
            # The logged losses are the global batch's (mean of the equal-sized rank shares), on every rank,
            # so checkpoints from rank 0 carry the full running sums.
            import torch.distributed as dist

            dist.all_reduce(values)
            values /= self.d.world
        out = dict(zip(names, values.tolist()))
        bad = {n: v for n, v in out.items() if not math.isfinite(v)}
        if bad:
            lr = next(iter(task.optimizers.values())).param_groups[0]["lr"]
            name, v = next(iter(bad.items()))
            what = "training loss" if names == ["loss"] else f"training loss {name!r}"
            raise DerainkitError(f"iteration {it}: {what} is {v}; lower lr (now {lr:.2e}) or set grad_clip")
        return out

    def _resolve_run(self, resume, allow_config_change: bool) -> tuple[Path, Optional[dict], Optional[Path]]:
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
                                allow_config_change=allow_config_change, config=cfg.to_dict())
        if state.get("task", "paired") != cfg.resolved_task:
            raise CheckpointError(f"{ckpt}: checkpoint of training task {state.get('task')!r}, but this run uses "
                                  f"{cfg.resolved_task!r}")
        if state["config_hash"] != self.hash:
            self.notes.append(f"started from {ckpt} (run config {state['config_hash']}) with a changed config")
            return own, state, ckpt
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run_dir, state, ckpt

    def _restore(self, task: TrainingTask, state: dict, total: int) -> tuple[int, dict]:
        """Load every module/optimizer/scheduler and the task state from ``state``; (start iteration, extra)."""
        note = f"checkpoint of run {state['config_hash']}"
        changed = state["config_hash"] != self.hash
        for kind, ours in (("modules", task.modules), ("optimizers", task.optimizers)):
            if set(state[kind]) != set(ours):
                raise CheckpointError(f"{note}: holds {kind} {sorted(state[kind])}, this task has {sorted(ours)}")
        for name, module in task.modules.items():
            try:
                module.load_state_dict(state["modules"][name], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{note}: weights of {name!r} do not fit {self.cfg.model} "
                                      f"{self.cfg.model_config}: {str(exc).splitlines()[0]}") from None
        for name, optimizer in task.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            if changed:  # a deliberate config change: the optimizers' hyperparameters come from the new config
                options = task.optimizer_options(name)
                for g in optimizer.param_groups:
                    g.update(initial_lr=options["lr"], **options)
        if not changed and state["total_iterations"] != total:
            raise CheckpointError(f"{note}: planned {state['total_iterations']} iterations, this run "
                                  f"{total} (the training data changed?)")
        start = int(state["iteration"])
        if start > total:
            raise CheckpointError(f"{note}: at iteration {start}, beyond this run's {total}")
        self._restore_schedulers(task, state, total, start, changed)
        task.load_state_dict(state.get("task_state") or {})
        set_rng_state(state["rng"])
        return start, dict(state.get("extra") or {})

    def _restore_schedulers(self, task: TrainingTask, state: dict, total: int, start: int, changed: bool) -> None:
        if not changed:
            for name, scheduler in task.schedulers.items():
                load_scheduler_state(scheduler, state["schedulers"][name])
            return
        task.build_schedulers(total)  # the new schedule, fast-forwarded to where the checkpoint was
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for scheduler in task.schedulers.values():
                for _ in range(start):
                    scheduler.step()

    def _barrier(self) -> None:
        if self.d.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # -------------------------------------------------------------- files
    def _write_run_files(self, run_dir: Path, task: TrainingTask, n_items: int, total: int, start: int,
                         ckpt_path: Optional[Path]) -> None:
        from derainkit.data import write_manifest
        from derainkit.provenance import provenance

        cfg = self.cfg
        header = f"# derainkit run config {self.hash} (RunConfig.from_file reads this file)\n"
        atomic_write_text(run_dir / "config.yaml", header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        digests = [write_manifest(pairs, run_dir / name) for name, pairs in task.manifests().items()]
        for name, content in task.run_files().items():
            atomic_write_text(run_dir / name, json.dumps(content, indent=1) + "\n")
        entry = {**provenance(self.device), "start_iteration": start, "total_iterations": total,
                 "train_pairs": n_items, "train_root": str(task.train_root), "task": cfg.resolved_task,
                 "train_manifest_sha256": digests[0] if digests else None,
                 "world_size": self.d.world, "precision": self.precision, "notes": list(self.notes),
                 "resumed_from": str(ckpt_path) if ckpt_path else None, "milestones": cfg.milestones(total),
                 "run_epochs": total * cfg.batch / n_items}
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
        status = {"config_hash": self.hash, "model": self.cfg.model, "task": self.cfg.resolved_task,
                  "iteration": done, "total_iterations": total, "finished": done >= total, "metrics": metrics,
                  "input_metrics": input_metrics, "weights": str(weights) if weights else None,
                  "precision": self.precision, "device": str(self.device), "world_size": self.d.world,
                  "notes": self.notes}
        atomic_write_text(run_dir / "run.json", json.dumps(status, indent=1, default=str) + "\n")
