"""The paired supervised task: one network, one loss against the clean crop, one optimizer.

This is how MSGNN, PReNet and the other supervised peers train: a batch of aligned rainy/clean crops
(plus, for a model with an exemplar branch, an exemplar crop chosen by the run's ``exemplar`` policy,
see :mod:`derainkit.train.dataset`), ``loss(model(rainy[, exemplar]), clean)``, backward, optional
gradient clipping, ``optimizer.step()``. Its options (loss, exemplar policy, optimizer and schedule)
are run-config keys: they predate training tasks and name the runs already stored.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from derainkit.errors import ConfigError
from derainkit.losses import ModelLoss
from derainkit.strictconfig import strict_from_dict
from derainkit.train.tasks.base import TrainingTask, make_optimizer


@dataclass(frozen=True)
class PairedConfig:
    """The paired task has no options of its own yet (see the module docstring)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PairedConfig":
        return strict_from_dict(cls, data, "paired task config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PairedTask(TrainingTask):
    loss_names = ("loss",)

    def load_data(self):
        from derainkit.losses import get_loss
        from derainkit.models import get_model_spec
        from derainkit.train.dataset import PairSampler, TrainingSet

        run = self.run
        self.spec = get_model_spec(run.model)
        self.model_config = self.spec.config_from_dict(dict(run.model_config))
        self.uses_exemplar = self.spec.takes_exemplar(self.model_config)
        self._check_exemplar_policy()
        self.loss_fn = get_loss(run.loss)
        self.static_graph = self.spec.static_graph
        self.data = TrainingSet.load(run.train_data, run.layout, run.clean_side, progress=self.ctx.progress)
        self.train_root = self.data.root
        self.sampler = PairSampler(self.data, run.crop, run.batch, run.seed,
                                   run.exemplar if self.uses_exemplar else "none")
        return self.sampler, len(self.data)

    def _check_exemplar_policy(self) -> None:
        run = self.run
        if run.exemplar == "none" and self.uses_exemplar:
            raise ConfigError(f"exemplar='none' but model {run.model!r} has its exemplar branch on (it would fall "
                              "back to the input itself); set model_config.exemplar=false or pick another policy")
        if not self.uses_exemplar and run.exemplar != "none":
            self.ctx.notes.append(f"model {run.model!r} takes no exemplar: exemplar policy {run.exemplar!r} unused")

    def build(self) -> None:
        model = self.build_network(self.spec, self.model_config)
        self._check_crop(model)
        self.modules = {"model": model}
        self.optimizers = {"model": make_optimizer(self.run, model.parameters())}

    def _check_crop(self, model: torch.nn.Module) -> None:
        min_side = getattr(model, "min_input_side", None)
        side = min_side() if min_side is not None else 1
        if self.run.crop < side:
            raise ConfigError(f"crop={self.run.crop} is smaller than model {self.run.model!r} with this model_config "
                              f"can process (at least {side}×{side} px, e.g. for MSGNN's graph patches at every "
                              "scale); raise crop")

    def step(self, batch: Mapping[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        keys = ("rainy", "exemplar") if self.uses_exemplar else ("rainy",)
        b = self.ctx.to_device({k: batch[k] for k in keys + ("clean",)}, images=keys)
        # a ModelLoss asks the model for more than the image (stage outputs, an attention map)
        kwargs = dict(getattr(self.loss_fn, "forward_kwargs", {}))
        if self.uses_exemplar:
            kwargs["exemplar"] = b["exemplar"]
        with self.ctx.autocast():
            pred = self.calls["model"](b["rainy"], **kwargs)
        if isinstance(self.loss_fn, ModelLoss):  # in fp32, outside autocast (see derainkit.losses)
            loss = self.loss_fn(pred, b["clean"], b["rainy"])
        else:
            loss = self.loss_fn(pred, b["clean"])
        optimizer = self.optimizers["model"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.grad_clip(self.modules["model"])
        optimizer.step()
        return {"loss": loss.detach()}

    def run_files(self) -> dict[str, Any]:
        report = self.sampler.exemplar_report()
        report["model_uses_exemplar"] = self.uses_exemplar
        return {"exemplars.json": report}

    def manifests(self) -> dict[str, Sequence]:
        if any(p.layout == "memory" for p in self.data.pairs):
            return {}
        return {"train_manifest.csv": self.data.pairs}
