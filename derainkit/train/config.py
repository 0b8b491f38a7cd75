"""`RunConfig`: everything that defines a training run, strict to read and hashable to name the run.

The defaults are the MSGNN paper's recipe as its official code runs it (reference note §3):
−SSIM loss, Adam at 5e-4 with default betas and no weight decay, ÷10 at 60 % and 80 % of the
schedule (stepped per iteration), 64×64 crops, batch 8, 500 epochs, seed 66.

    cfg = RunConfig.from_file("runs/msgnn.yaml").with_overrides(["iterations=1000", "model_config.k=7"])
    cfg.config_hash()   # '3f1c9a0b2e7d': names the run folder <out_dir>/<hash>/

Length of the run: set ``iterations`` or ``epochs`` (an epoch is one pass over the training pairs;
the iteration count is ceil(epochs · pairs / batch), worked out when the data is loaded and recorded in
the run). Setting one in ``from_dict``/``with_overrides`` clears the other unless both are given, which
is an error. With neither, the paper's 500 epochs apply.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping


from derainkit.errors import ConfigError
from derainkit.strictconfig import MAX_CONFIG_BYTES, coerce_fields, load_yaml, strict_from_dict

OPTIMIZERS = ("adam", "adamw")
EXEMPLAR_POLICIES = ("official", "random", "self", "none", "retrieval")
PRECISIONS = ("fp32", "bf16")
DEFAULT_EPOCHS = 500.0

# Fields that cannot change what a run computes, left out of the hash so that moving the output folder,
# changing the loader's worker count or how often checkpoints are written still names the same run.
NOT_IN_HASH = ("out_dir", "num_workers", "checkpoint_every")
# Fields added after runs were first stored: left out of the hash while at these defaults, so the
# stored runs keep their names (a run that sets one gets a new name, as it computes something new).
ADDED_LATER = {"lr_policy": "multistep", "lr_decay_every": 0, "lr_floor": 0.0}
LR_POLICIES = ("multistep", "exponential")


@dataclass(frozen=True)
class RunConfig:
    """One training run. Every field can be set from YAML/JSON or ``--set key=value``."""

    model: str = "msgnn"  # name in derainkit.models.MODELS
    model_config: dict = field(default_factory=dict)  # passed to the model's strict config_from_dict
    task: str | None = None  # training task (derainkit.train.tasks); None: the model's own (ModelSpec.task)
    task_config: dict = field(default_factory=dict)  # passed to the task's strict config class
    init_weights: str | None = None  # start from these weights (fine-tuning) instead of random init
    train_data: str = "embedded:train"  # folder in any supported layout, or "embedded:train"
    val_data: str | None = "embedded:test"  # folder, "embedded:test", or None for no validation
    layout: str = "auto"  # layout of train_data (see derainkit.data.LAYOUTS)
    val_layout: str = "auto"  # layout of val_data
    clean_side: str = "left"  # side_by_side files: which half is clean (MSGNN/DCSFN: left)
    crop: int = 64
    batch: int = 8
    iterations: int | None = None
    epochs: float | None = None  # None with iterations None: DEFAULT_EPOCHS
    optimizer: str = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping (official)
    lr_milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the run at which lr *= lr_gamma
    lr_gamma: float = 0.1
    lr_policy: str = "multistep"  # multistep (milestones) | exponential: lr·γ^(t/lr_decay_every) + lr_floor
    lr_decay_every: int = 0  # exponential: iterations per factor γ (MSPFN: 20000)
    lr_floor: float = 0.0  # exponential: added to the decayed lr (MSPFN: 1e-6)
    loss: str = "ssim"
    seed: int = 66
    exemplar: str = "official"  # official | random | self | none | retrieval (see train.dataset)
    val_every: int = 0  # validate every N iterations (0: only at the end)
    val_protocols: tuple[str, ...] = ("msgnn-rgb", "matlab-y")
    val_limit: int = 0  # first N validation pairs (0: all)
    log_every: int = 100  # training-loss rows in log.csv every N iterations (0: only with validation)
    checkpoint_every: int = 1000  # checkpoints/iter_<n>.pt + latest.pt every N iterations (0: only at the end)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    precision: str = "fp32"  # fp32 | bf16 (autocast on CUDA only; elsewhere fp32 is used and recorded)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (CUDA; off by default)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CUDA)
    num_workers: int = 0  # data-loader processes; samples do not depend on it
    out_dir: str | None = None  # runs are written to <out_dir>/<config_hash>/; None: runs/<model>

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RunConfig":
        """Strict constructor: unknown keys raise ConfigError listing the valid keys; values are checked."""
        return strict_from_dict(cls, data, "run config")

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        """Read a YAML or JSON run config (a mapping of RunConfig keys)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: run config file not found")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a run config")
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text file ({exc})") from None
        data = load_yaml(text, str(path))  # YAML is a superset of JSON
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of run config keys, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def __post_init__(self) -> None:
        # Direct construction gets the same coercion and checks as from_dict (types: the annotations).
        coerce_fields(self)
        object.__setattr__(self, "val_protocols", tuple(dict.fromkeys(self.val_protocols)))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the key and what is allowed for any invalid value."""
        from derainkit.data.layouts import LAYOUTS
        from derainkit.losses import LOSSES

        if self.iterations is not None and self.epochs is not None:
            raise ConfigError(f"set either iterations ({self.iterations}) or epochs ({self.epochs}), not both")
        if not self.model:
            raise ConfigError("model must name a registered model (see `derainkit models`)")
        for name, allowed in (("layout", ("auto",) + LAYOUTS), ("val_layout", ("auto",) + LAYOUTS),
                              ("clean_side", ("left", "right")), ("optimizer", OPTIMIZERS), ("loss", tuple(LOSSES)),
                              ("exemplar", EXEMPLAR_POLICIES), ("precision", PRECISIONS), ("lr_policy", LR_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid; expected one of {list(allowed)}")
        for name in ("crop", "batch", "lr", "eps", "lr_gamma", "iterations", "epochs", "grad_clip"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.lr_policy == "exponential" and self.lr_decay_every < 1:
            raise ConfigError("lr_policy=exponential needs lr_decay_every >= 1 (iterations per factor lr_gamma)")
        for name in ("weight_decay", "seed", "val_every", "val_limit", "log_every", "checkpoint_every",
                     "num_workers", "lr_decay_every", "lr_floor"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas={list(self.betas)} must be two numbers in [0, 1)")
        ms = self.lr_milestones
        if not all(0.0 < m < 1.0 for m in ms) or list(ms) != sorted(set(ms)):
            raise ConfigError(f"lr_milestones={list(ms)} must be increasing fractions of the run in (0, 1), "
                              "e.g. [0.6, 0.8]")
        self._validate_protocols()
        self._validate_model_and_task()
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")
                                          or self.device == "mps"):
            raise ConfigError(f"device={self.device!r} is invalid; expected auto, cpu, cuda or cuda:N")

    def _validate_protocols(self) -> None:
        from derainkit.metrics.protocols import PROTOCOLS

        if not self.val_protocols and self.val_data is not None:
            raise ConfigError(f"val_protocols is empty; choose from {list(PROTOCOLS)} or set val_data: null")
        for p in self.val_protocols:
            if p not in PROTOCOLS:
                raise ConfigError(f"val_protocols: unknown protocol {p!r}; choose from {list(PROTOCOLS)}")

    def _validate_model_and_task(self) -> None:
        from derainkit.models import MODELS
        from derainkit.train.tasks import TASKS

        if self.model in MODELS:  # unregistered names are reported when the run starts
            try:
                MODELS[self.model].config_from_dict(dict(self.model_config))
            except ConfigError as exc:
                raise ConfigError(f"model_config (model {self.model!r}): {exc}") from None
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"task={self.task!r} is invalid; expected one of {sorted(TASKS)} (or null: the "
                              "model's own task)")
        task = self.resolved_task
        if task in TASKS:
            try:
                TASKS[task].config_from_dict(dict(self.task_config))
            except ConfigError as exc:
                raise ConfigError(f"task_config (task {task!r}): {exc}") from None

    # ------------------------------------------------------------------ derived values
    @property
    def resolved_task(self) -> str:
        """The training task: ``task``, else the model's own."""
        return self.task if self.task is not None else self.model_task()

    def model_task(self) -> str:
        """The registered model's own training task (``ModelSpec.task``; ``paired`` for unknown models)."""
        from derainkit.models import MODELS

        spec = MODELS.get(self.model)
        return spec.task if spec is not None else "paired"

    @property
    def run_epochs(self) -> float:
        """The epochs to run when ``iterations`` is not set (``DEFAULT_EPOCHS`` when neither is)."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS

    def total_iterations(self, n_pairs: int) -> int:
        """Iterations of the run: ``iterations``, or ceil(epochs · n_pairs / batch)."""
        if self.iterations is not None:
            return int(self.iterations)
        if n_pairs < 1:
            raise ConfigError("cannot convert epochs to iterations without training pairs")
        return max(1, math.ceil(self.run_epochs * n_pairs / self.batch))

    def milestones(self, iterations: int) -> list[int]:
        """LR milestones in iterations: round(f · iterations) within [1, iterations). Two fractions that
        round to one iteration (very short runs) both apply there (lr·γ²), as MultiStepLR does."""
        out = sorted(int(round(f * iterations)) for f in self.lr_milestones)
        return [m for m in out if 0 < m < iterations]

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.model

    def run_dir(self) -> Path:
        """The run folder: <out_dir>/<config_hash>/."""
        return self.resolved_out_dir() / self.config_hash()

    # ------------------------------------------------------------------ (de)serialisation and identity
    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly dict (tuples as lists); ``from_dict(to_dict())`` round-trips."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (json.loads(json.dumps(v)) if isinstance(v, dict) else v)
        return out

    def identity(self) -> dict[str, Any]:
        """What the hash covers: every field except those that cannot change results, with the model
        config put through the model's own config class (so ``{}`` and the explicit defaults agree)."""
        d = self.to_dict()
        for name in NOT_IN_HASH:
            d.pop(name)
        d["model_config"] = canonical_model_config(self.model, self.model_config)
        # The task keys came after the first records were stored: at their defaults (the model's own task,
        # its default options) they are left out, so those runs keep their names.
        for name, default in ADDED_LATER.items():
            if d[name] == default:
                d.pop(name)
        d.pop("task")
        task_config = d.pop("task_config")
        if self.task is not None and self.task != self.model_task():
            d["task"] = self.task
        canonical = canonical_task_config(self.resolved_task, task_config)
        if canonical != canonical_task_config(self.resolved_task, {}):
            d["task_config"] = canonical
        return d

    def config_hash(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON of ``identity()``."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: Iterable[str]) -> "RunConfig":
        """A copy with ``key=value`` overrides applied; values are parsed as YAML (``lr=1e-4``,
        ``lr_milestones=[0.5, 0.75]``, ``val_data=null``); ``model_config.k=7`` sets a nested key."""
        data = self.to_dict()
        set_keys: set[str] = set()
        for item in overrides:
            key, sep, text = str(item).partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-4, model_config.k=7)")
            value = load_yaml(text, f"override {item!r}: value") if text.strip() else None
            top, _, rest = key.partition(".")
            if top not in data:
                raise ConfigError(f"override {item!r}: unknown run config key {top!r}; valid keys: "
                                  f"{self.field_names()}")
            if rest:
                if not isinstance(data[top], dict):
                    raise ConfigError(f"override {item!r}: {top} is not a mapping, so it has no key {rest!r}")
                node = data[top]
                *parents, leaf = rest.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                    if not isinstance(node, dict):
                        raise ConfigError(f"override {item!r}: {p} is not a mapping")
                node[leaf] = value
            else:
                data[top] = value
            set_keys.add(top)
        # The run length is one of two keys: setting one clears the other.
        if "iterations" in set_keys and "epochs" not in set_keys:
            data["epochs"] = None
        elif "epochs" in set_keys and "iterations" not in set_keys:
            data["iterations"] = None
        return RunConfig.from_dict(data)


def canonical_task_config(task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` through the task's config class (defaults filled in), when the task is registered."""
    from derainkit.train.tasks import TASKS

    if task not in TASKS:
        return json.loads(json.dumps(dict(config)))
    return json.loads(json.dumps(TASKS[task].config_from_dict(dict(config)).to_dict()))


def canonical_model_config(model: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the model's defaults filled in, when the model is registered and its config class
    has ``to_dict``; otherwise ``config`` as given."""
    from derainkit.models import MODELS

    spec = MODELS.get(model)
    if spec is None:
        return json.loads(json.dumps(dict(config)))
    obj = spec.config_from_dict(dict(config))  # ConfigError for keys the model does not have
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is None:
        return json.loads(json.dumps(dict(config)))
    return json.loads(json.dumps(to_dict()))
