"""The UniRain training task: one MoE network on four rain types, per-type losses reweighted each epoch.

What the released ``train.py`` does (reference §2.2, §4), and how it maps here:

* data: ``<train_data>/{drs,drd,nrs,nrd}/{input,target}/`` (:mod:`derainkit.data.rain_types` writes
  and reads it); the type of a sample is its folder. ``val_size`` pairs per type are held aside
  (chosen by the run seed) for the per-type validation losses and never trained on. (The code reads
  a separate ``--val_dir``, by default the training folder itself.)
* batch loss: ``Σ_i ω_i · L1(restored[type = i], target[type = i]) · n_i / B`` (n_i the type's samples in
  the batch of B). Under DDP every rank computes it on its own B/W samples; since it equals
  ``(1/B) Σ_samples ω_type · L1_sample``, the mean over ranks is the global batch's loss, for any world size.
* weights ω: :class:`derainkit.losses.reweighting.LossReweighter` (``reweighting``: code | paper |
  uniform), updated at the end of every epoch from the per-type validation L1 (each held-aside image
  centre-cropped to ``val_crop``, batch 1, eval mode: no routing noise), as the code's
  ``on_validation_epoch_end`` does.
* **deviation**: an "epoch" is ``epoch_iterations`` iterations, not a pass over the data, so that short
  CPU runs still see the warm-up (20 epochs in the code) and several weight updates (reference §6.2).
  The log's ``epoch`` column counts these epochs.
* sampling (``sampling``): ``mixed`` (the code: one concatenated, shuffled data set, so types appear in
  proportion to their sizes; every pair once per pass) or ``balanced`` (slot s of every batch takes
  type s mod K, each type its own shuffled stream). Crops are uniform; ``augment="code"`` applies one of
  the 7 non-identity flips/rotations to input and target (the code never draws the identity).
* router noise: each sample carries a seed drawn from (run seed, iteration, slot), from which its
  routers' noise is drawn (:class:`derainkit.models.unirain.RoutingNoise`). The noise is thus a pure
  function of the sample, like the crops: a resumed run and any number of DDP ranks draw the same
  noise, with no generator state to carry (a stateful generator could not survive a resume under DDP,
  where only rank 0 writes the checkpoint). The task state records the scheme and checks it on resume.
* ``static_graph = False``: the hard decoder layers use different experts in different steps.

Logged values (``loss_names``; the loop writes ``train_<name>`` columns, averaged over each log
interval): ``loss`` (the weighted batch loss), ``loss_<type>`` (that type's L1 times n_i/B, so that
``loss = Σ_t w_t · loss_t``; 0 in a batch without the type) and ``w_<type>`` (the weight the step used).
Validation losses, slopes and scores of every update are in the reweighter's state in each checkpoint:
:func:`reweighting_record` reads them back. The learning-rate schedule is the run's (MultiStepLR), not
the code's warm-up cosine; ``task_config.loss`` (default ``l1``, the code's) is the loss, not
``run.loss``.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from derainkit.data.rain_types import RAIN_TYPES
from derainkit.errors import CheckpointError, ConfigError, DatasetError
from derainkit.losses.reweighting import LossReweighter, ReweightConfig
from derainkit.strictconfig import coerce_fields, strict_from_dict, to_plain_dict
from derainkit.train.dataset import TrainingSet
from derainkit.train.tasks.base import TrainingTask, make_optimizer

SAMPLINGS = ("mixed", "balanced")
AUGMENTS = ("code", "none")
NOISE_SCHEME = "per-sample seeds from SeedSequence([seed, 2, iteration, slot])"
_TAG_PERMUTATION, _TAG_SAMPLE, _TAG_VALIDATION = 11, 2, 13


@dataclass(frozen=True)
class UniRainTaskConfig:
    """Options of the UniRain task (see the module docstring).

    types:            rain types trained (folders of the training data), in weight order
    epoch_iterations: iterations per "epoch" (the reweighter updates once per epoch)
    val_size:         validation pairs per type: held aside from the training data, or, with val_root,
                      the first val_size pairs of each type there (and nothing is held aside)
    val_root:         a separate {type}/{input,target} folder for the per-type validation losses (runs on
                      different training sets, e.g. naive vs distilled, then share one validation set)
    val_crop:         centre crop side of each validation image (0: the whole image)
    reweighting:      code | paper | uniform (derainkit.losses.reweighting)
    window, temperature, warmup_epochs, floor, normalize: the reweighter's N, τ, warm-up, floor and
                      normalisation (None: the variant's own)
    sampling:         mixed | balanced
    augment:          code (one of 7 non-identity flips/rotations) | none
    loss:             per-type loss (derainkit.losses; the code: l1)
    """

    types: tuple[str, ...] = RAIN_TYPES
    epoch_iterations: int = 100
    val_size: int = 4
    val_root: str | None = None
    val_crop: int = 128
    reweighting: str = "code"
    window: int = 10
    temperature: float = 5.0
    warmup_epochs: int = 20
    floor: float | None = None
    normalize: bool | None = None
    sampling: str = "mixed"
    augment: str = "code"
    loss: str = "l1"

    def __post_init__(self) -> None:
        from derainkit.losses import LOSSES

        coerce_fields(self, prefix="UniRainTaskConfig.")
        if not self.types or len(set(self.types)) != len(self.types) or any(t not in RAIN_TYPES for t in self.types):
            raise ConfigError(f"UniRainTaskConfig.types={list(self.types)}: distinct names out of {list(RAIN_TYPES)}")
        for key, low in (("epoch_iterations", 1), ("val_size", 1), ("val_crop", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"UniRainTaskConfig.{key}={getattr(self, key)}: must be >= {low}")
        for key, allowed in (("sampling", SAMPLINGS), ("augment", AUGMENTS), ("loss", tuple(LOSSES))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"UniRainTaskConfig.{key}={getattr(self, key)!r}: must be one of {list(allowed)}")
        self.reweight_config()  # validates the reweighting options

    def reweight_config(self) -> ReweightConfig:
        return ReweightConfig(variant=self.reweighting, window=self.window, temperature=self.temperature,
                              warmup=self.warmup_epochs, floor=self.floor, normalize=self.normalize)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "UniRainTaskConfig":
        return strict_from_dict(cls, d, "UniRain task config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return to_plain_dict(self)


# ------------------------------------------------------------------------------------------- data

def _dihedral(a: np.ndarray, mode: int) -> np.ndarray:
    """Mode 0..7 of the 8 flips/rotations of an H×W×C array (0 the identity)."""
    out = np.rot90(a, k=mode % 4, axes=(0, 1))
    return np.ascontiguousarray(out[::-1] if mode >= 4 else out)


class TypedSampler:
    """Typed crops as a pure function of (seed, iteration, slot): input, target, type id, noise seed."""

    def __init__(self, sets: Mapping[str, TrainingSet], crop: int, batch: int, seed: int, sampling: str = "mixed",
                 augment: str = "code", epoch_iterations: int = 1) -> None:
        self.types = tuple(sets)
        self.sets = [sets[t] for t in self.types]
        self.crop, self.batch_size, self.seed = int(crop), int(batch), int(seed)
        self.sampling, self.augment, self.epoch_iterations = sampling, augment, int(epoch_iterations)
        if sampling == "balanced" and batch < len(self.types):
            raise ConfigError(f"sampling='balanced' needs batch >= {len(self.types)} (one slot per type), got {batch}")
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        for t, s in zip(self.types, self.sets):
            small = [p.rainy for p, r in zip(s.pairs, s.rainy) if min(r.shape[:2]) < self.crop]
            if small:
                raise DatasetError(f"crop {self.crop} is larger than {len(small)} {t} training image(s), e.g. "
                                   f"{small[0]}; lower crop")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def epoch_of(self, iteration: int) -> float:
        """Reweighting epochs completed at the start of ``iteration`` (an epoch is epoch_iterations)."""
        return iteration / self.epoch_iterations

    def _permuted(self, g: int, n: int, stream: int) -> int:
        epoch, position = divmod(g, n)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_PERMUTATION, stream, epoch]))
        return int(rng.permutation(n)[position])

    def locate(self, iteration: int, slot: int) -> tuple[int, int]:
        """(type id, pair index within the type) of sample ``slot`` of ``iteration``."""
        if self.sampling == "mixed":
            flat = self._permuted(int(iteration) * self.batch_size + int(slot), len(self), len(RAIN_TYPES))
            t = int(np.searchsorted(self.offsets, flat, side="right") - 1)
            return t, flat - int(self.offsets[t])
        k = len(self.types)
        t = int(slot) % k
        per_batch = len(range(t, self.batch_size, k))
        g = int(iteration) * per_batch + int(slot) // k
        return t, self._permuted(g, len(self.sets[t]), RAIN_TYPES.index(self.types[t]))

    def sample(self, iteration: int, slot: int) -> dict[str, Any]:
        if not 0 <= slot < self.batch_size:
            raise ValueError(f"slot {slot} outside the batch of {self.batch_size}")
        t, i = self.locate(iteration, slot)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_SAMPLE, int(iteration), int(slot)]))
        rainy, clean = self.sets[t].rainy[i], self.sets[t].clean[i]
        c = self.crop
        top = int(rng.integers(0, rainy.shape[0] - c + 1))
        left = int(rng.integers(0, rainy.shape[1] - c + 1))
        mode = int(rng.integers(1, 8)) if self.augment == "code" else 0
        noise_seed = int(rng.integers(0, 2 ** 62))
        return {"type": t, "index": i, "top": top, "left": left, "mode": mode, "noise_seed": noise_seed,
                "rainy": _dihedral(rainy[top:top + c, left:left + c], mode),
                "clean": _dihedral(clean[top:top + c, left:left + c], mode)}

    def batch(self, iteration: int, slots: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        slots = range(self.batch_size) if slots is None else slots
        samples = [self.sample(iteration, s) for s in slots]
        out = {k: torch.from_numpy(np.ascontiguousarray(np.stack([s[k] for s in samples]).transpose(0, 3, 1, 2)))
               for k in ("rainy", "clean")}
        out.update({k: torch.tensor([s[k] for s in samples], dtype=torch.int64)
                    for k in ("type", "index", "noise_seed", "mode")})
        return out


def _typed_sets(root: Path, types: Sequence[str], val_size: int, seed: int,
                val_root: Path | None = None) -> tuple[dict[str, TrainingSet], dict[str, TrainingSet]]:
    """Per type: (training set, validation set). Without ``val_root`` the validation pairs are held aside
    from ``root`` (chosen by ``seed``); with it they are the first ``val_size`` pairs of each type there."""
    from derainkit.data.rain_types import rain_type_pairs
    from derainkit.train.dataset import check_fits_in_memory

    found = rain_type_pairs(root, types)
    check_fits_in_memory(root, [p.rainy for v in found.values() for p in v], copies=2)
    held_out = rain_type_pairs(val_root, types) if val_root is not None else None
    train, val = {}, {}
    for t in types:
        pairs = [dataclasses.replace(p, id=f"{t}/{p.id}", root=root) for p in found[t]]
        if held_out is not None:
            extra = [dataclasses.replace(p, id=f"{t}/{p.id}", root=val_root) for p in held_out[t]]
            if len(extra) < val_size:
                raise DatasetError(f"{val_root / t}: {len(extra)} pairs, fewer than val_size={val_size}")
            train[t], val[t] = _in_memory(pairs, root), _in_memory(extra[:val_size], val_root)
            continue
        if len(pairs) <= val_size:
            raise DatasetError(f"{root / t}: {len(pairs)} pairs, but val_size={val_size} are held aside for "
                               "validation; add pairs or lower task_config.val_size")
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_VALIDATION, RAIN_TYPES.index(t)]))
        held = set(int(i) for i in rng.permutation(len(pairs))[:val_size])
        val[t] = _in_memory([p for k, p in enumerate(pairs) if k in held], root)
        train[t] = _in_memory([p for k, p in enumerate(pairs) if k not in held], root)
    return train, val


def _in_memory(pairs: Sequence, root: Path) -> TrainingSet:
    from derainkit.data import load_pair

    images = [load_pair(p) for p in pairs]
    return TrainingSet(pairs=list(pairs), rainy=[r for r, _ in images], clean=[c for _, c in images], root=root)


def _centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if not side or (h <= side and w <= side):
        return img
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[top:top + side, left:left + side]


# ------------------------------------------------------------------------------------------- the task

class UniRainTask(TrainingTask):
    static_graph = False  # hard routing: different experts run in different steps
    export_name = "model"

    def __init__(self, ctx, config: UniRainTaskConfig) -> None:
        super().__init__(ctx, config)
        types = config.types
        self.loss_names = ("loss",) + tuple(f"loss_{t}" for t in types) + tuple(f"w_{t}" for t in types)

    def load_data(self):
        from derainkit.losses import get_loss
        from derainkit.models import get_model_spec
        from derainkit.train.dataset import resolve_data_path

        run, cfg = self.run, self.config
        self.spec = get_model_spec(run.model)
        self.model_config = self.spec.config_from_dict(dict(run.model_config))
        self.loss_fn = get_loss(cfg.loss)
        root = resolve_data_path(run.train_data)
        self.train_root = root
        val_root = resolve_data_path(cfg.val_root) if cfg.val_root else None
        self.train_sets, self.val_sets = _typed_sets(root, cfg.types, cfg.val_size, run.seed, val_root)
        self.sampler = TypedSampler(self.train_sets, run.crop, run.batch, run.seed, cfg.sampling, cfg.augment,
                                    cfg.epoch_iterations)
        where = f"from {val_root}" if val_root else "held aside"
        self.ctx.notes.append(f"UniRain task: an epoch is {cfg.epoch_iterations} iterations (not a pass over the "
                              f"data); {cfg.val_size} validation pairs per type {where}; loss {cfg.loss} "
                              f"(run.loss={run.loss!r} unused); reweighting {cfg.reweighting}")
        return self.sampler, len(self.sampler)

    def build(self) -> None:
        model = self.build_network(self.spec, self.model_config)
        self.takes_noise = "noise" in inspect.signature(model.forward).parameters
        self.modules = {"model": model}
        self.optimizers = {"model": make_optimizer(self.run, model.parameters())}
        self.reweighter = LossReweighter(self.config.types, self.config.reweight_config())
        self._val_images = {t: [self._val_tensors(r, c) for r, c in zip(s.rainy, s.clean)]
                            for t, s in self.val_sets.items()}

    def _val_tensors(self, rainy: np.ndarray, clean: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        side = self.config.val_crop
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(_centre_crop(a, side).transpose(2, 0, 1)))[None]  # noqa: E731
        return as_t(rainy).to(self.ctx.device), as_t(clean).to(self.ctx.device)

    def step(self, batch: Mapping[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        b = self.ctx.to_device({k: batch[k] for k in ("rainy", "clean", "type")}, images=("rainy",))
        kwargs = {"noise": _noise(batch["noise_seed"])} if self.takes_noise else {}
        with self.ctx.autocast():
            pred = self.calls["model"](b["rainy"], **kwargs)
        weights = self.reweighter.weights
        total, shares = self._weighted_loss(pred, b["clean"], b["type"], weights)
        optimizer = self.optimizers["model"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.grad_clip(self.modules["model"])
        optimizer.step()
        out = {"loss": total.detach()}
        out.update({f"loss_{t}": s for t, s in zip(self.config.types, shares)})
        out.update({f"w_{t}": torch.tensor(w, dtype=torch.float64) for t, w in zip(self.config.types, weights)})
        if (iteration + 1) % self.config.epoch_iterations == 0:
            self.reweighter.update(self.validate())
        return out

    def _weighted_loss(self, pred: torch.Tensor, clean: torch.Tensor, types: torch.Tensor,
                       weights: Sequence[float]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Σ_i ω_i · loss(type-i samples) · n_i / B, and the detached per-type terms loss_i · n_i / B."""
        b = pred.shape[0]
        total = pred.new_zeros((), dtype=torch.float32)
        shares = []
        for i, w in enumerate(weights):
            mask = types == i
            n = int(mask.sum())
            if n == 0:
                shares.append(pred.new_zeros((), dtype=torch.float32))
                continue
            share = self.loss_fn(pred[mask], clean[mask]) * (n / b)
            total = total + float(w) * share
            shares.append(share.detach())
        return total, shares

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean per-type validation L1 of the model in eval mode (deterministic: no routing noise)."""
        module = self.modules["model"]
        was_training = module.training
        module.eval()
        try:
            return {t: float(np.mean([float(torch.nn.functional.l1_loss(module(x), y)) for x, y in pairs]))
                    for t, pairs in self._val_images.items()}
        finally:
            module.train(was_training)

    # -------------------------------------------------------------- state and records
    def state_dict(self) -> dict[str, Any]:
        return {"reweighter": self.reweighter.state_dict(), "routing_noise": {"scheme": NOISE_SCHEME,
                                                                              "seed": int(self.run.seed)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        noise = state.get("routing_noise") or {}
        if noise.get("scheme") != NOISE_SCHEME:
            raise CheckpointError(f"checkpoint routing noise {noise.get('scheme')!r}; this task draws {NOISE_SCHEME!r}")
        self.reweighter.load_state_dict(state["reweighter"])

    def run_files(self) -> dict[str, Any]:
        return {"unirain_data.json": {
            "types": list(self.config.types), "task_config": self.config.to_dict(),
            "train_pairs": {t: len(s) for t, s in self.train_sets.items()},
            "validation_pairs": {t: [p.id for p in s.pairs] for t, s in self.val_sets.items()},
            "epoch_iterations": self.config.epoch_iterations, "routing_noise": NOISE_SCHEME}}

    def manifests(self) -> dict[str, Sequence]:
        return {"train_manifest.csv": [p for s in self.train_sets.values() for p in s.pairs],
                "val_manifest.csv": [p for s in self.val_sets.values() for p in s.pairs]}


def _noise(seeds: torch.Tensor):
    from derainkit.models.unirain.router import RoutingNoise

    return RoutingNoise.from_seeds(seeds)


def reweighting_record(run: str | Path) -> dict[str, Any]:
    """The reweighter's history from a run folder's latest checkpoint (or a checkpoint file): types, and
    per update the epoch, the per-type validation losses, the weights set and the scores behind them."""
    from derainkit.train.checkpoint import LATEST, load_checkpoint

    path = Path(run)
    if path.is_dir():
        path = path / "checkpoints" / LATEST
    state = load_checkpoint(path)
    rw = (state.get("task_state") or {}).get("reweighter")
    if rw is None:
        raise CheckpointError(f"{path}: not a checkpoint of the UniRain task (no reweighter state)")
    types = rw["types"]
    return {"types": types, "config": rw["config"], "epochs": [r["update"] for r in rw["trace"]],
            "val_losses": {t: [r["losses"][i] for r in rw["trace"]] for i, t in enumerate(types)},
            "weights": {t: [r["weights"][i] for r in rw["trace"]] for i, t in enumerate(types)},
            "trace": rw["trace"]}
