"""Training tasks by name: what a model family does in one optimisation step (see ``base.py``).

``paired``   supervised on aligned rainy/clean crops (MSGNN, PReNet and the supervised peers)
``nlcl``     unsupervised, unpaired rainy and clean crops, adversarial + contrastive (NLCL)
``unirain``  four rain types with per-type losses reweighted during training (UniRain)

A model's registry entry (``derainkit.models.ModelSpec.task``) names the task that trains it; a run
config may name another (``task:``) and pass it options (``task_config:``), which the task's typed
config class checks as strictly as ``model_config``. Entries import their module only when used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from derainkit.errors import ConfigError
from derainkit.lazy import lazy


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    config_from_dict: Callable[[Mapping[str, Any] | None], Any]
    build: Callable[..., Any]  # (TaskContext, config) -> TrainingTask
    data_keys: tuple[str, ...] = ()  # task_config keys naming data folders (results stores key them by content)


TASKS: dict[str, TaskSpec] = {
    "paired": TaskSpec(
        name="paired",
        description="supervised on paired crops: one model, one loss, one optimizer (exemplar policies for MSGNN)",
        config_from_dict=lazy("derainkit.train.tasks.paired", "PairedConfig.from_dict"),
        build=lazy("derainkit.train.tasks.paired", "PairedTask"),
    ),
    "nlcl": TaskSpec(
        name="nlcl",
        description="unsupervised on unpaired rainy/clean crops: D step then G step, one optimizer per network (NLCL)",
        config_from_dict=lazy("derainkit.train.tasks.nlcl", "NLCLTaskConfig.from_dict"),
        build=lazy("derainkit.train.tasks.nlcl", "NLCLTask"),
        data_keys=("clean_data",),
    ),
    "unirain": TaskSpec(
        name="unirain",
        description="four rain types, per-type L1 weighted by the CoBa-style reweighter (UniRain)",
        config_from_dict=lazy("derainkit.train.tasks.unirain", "UniRainTaskConfig.from_dict"),
        build=lazy("derainkit.train.tasks.unirain", "UniRainTask"),
        data_keys=("val_root",),
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown training task {name!r}; available: {', '.join(sorted(TASKS))}") from None
