"""`Lab`: what a notebook calls to get a table's numbers, computing only what the store lacks.

    lab = Lab(Profile(name="smoke"))                       # the notebook's parameters
    rec = lab.train_eval(model_config={"k": 7})            # train under the profile, score on its test set
    rec = lab.eval_weights("prenet", "PReNet6_net_latest.pth")
    row = lab.train_eval_seeds(model_config={"k": 7})      # the same, once per profile seed: mean ± std
    rec = lab.eval_input()                                 # the rainy images themselves
    png = lab.derain_image(rec, "photo.jpg")               # a trained model on one (real) image

Each call is one record in ``<results_dir>/<profile>/runs/`` (see :mod:`derainkit.experiments.store`),
keyed by what defines it: the run config (with data folders replaced by the sha256 digest of their
file manifests, so moving the data keeps the key), the test set digest, protocols and image limit.
Training runs (checkpoints, exported weights) go to ``<results_dir>/<profile>/train/<run hash>/`` and
resume after an interruption; they are not part of the committed results.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from derainkit.errors import ConfigError, DerainkitError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.experiments.store import Store, is_planned

_RESULTS_ENV = "DERAINKIT_RESULTS"
_SCHEDULE_KEYS = ("crop", "batch", "iterations", "epochs", "seed")  # the profile's, for every row of a table


PROFILES_DIR = Path(__file__).resolve().parent / "profiles"  # also at notebooks/profiles (a link)


def profile_values(name: str) -> dict[str, Any]:
    """The values of ``profiles/<name>.yaml`` (its ``profile:`` key becomes ``name``)."""
    from derainkit.strictconfig import load_yaml

    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}: no {path}; profiles: {known}")
    values = load_yaml(path.read_text(), str(path)) or {}
    values["name"] = values.pop("profile", name)
    return values


def notebook_values(profile: str, notebook: str) -> dict[str, Any]:
    """The profile's values for one notebook's own parameters (``notebook_params: {<stem>: {...}}``)."""
    return dict((profile_values(profile).get("notebook_params") or {}).get(notebook, {}))


_SMOKE = profile_values("smoke")  # the defaults everywhere: Profile, the notebooks' parameters cells, CI


@dataclass
class Profile:
    """The knobs a notebook's ``parameters`` cell exposes (defaults: ``profiles/smoke.yaml``)."""

    name: str = "smoke"
    results_dir: str = "results"   # $DERAINKIT_RESULTS overrides (CI points it at a scratch folder)
    model: str = "msgnn"           # the family that model_config configures (the paper's model)
    train_data: str = _SMOKE["train_data"]
    test_data: str = _SMOKE["test_data"]
    eval_limit: int = _SMOKE["eval_limit"]  # score only the first N test pairs (0: all)
    iterations: int | None = _SMOKE["iterations"]  # None: epochs from run_overrides (the paper profile)
    crop: int = _SMOKE["crop"]
    batch: int = _SMOKE["batch"]
    model_config: dict = field(default_factory=lambda: dict(_SMOKE["model_config"]))
    run_overrides: dict = field(default_factory=lambda: dict(_SMOKE["run_overrides"]))  # other RunConfig keys
    device: str = _SMOKE["device"]
    protocols: tuple[str, ...] = tuple(_SMOKE["protocols"])
    seeds: tuple[int, ...] = tuple(_SMOKE["seeds"])  # ablation rows train once per seed; single runs use the first
    force: bool = False            # recompute even when a record exists
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.force, str):  # `make ... FORCE=1` passes text
            self.force = self.force.strip().lower() not in ("", "0", "false", "no")
        elif isinstance(self.force, int) and not isinstance(self.force, bool) and self.force in (0, 1):
            self.force = bool(self.force)
        coerce_fields(self)
        self.validate()

    def validate(self) -> None:
        """Refuse values that would silently change what is measured (ConfigError naming the parameter)."""
        from derainkit.metrics.protocols import PROTOCOLS
        from derainkit.models import get_model_spec

        if self.eval_limit < 0:
            raise ConfigError(f"eval_limit={self.eval_limit} must be >= 0 (0 scores every test image)")
        for name in ("crop", "batch", "iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be >= 1")
        allowed = (*PROTOCOLS, "niqe")  # niqe: no-reference, for photos without ground truth
        if not self.protocols or any(p not in allowed for p in self.protocols):
            raise ConfigError(f"protocols={list(self.protocols)}: choose from {list(allowed)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)} must be distinct non-negative integers (at least one)")
        if "seed" in self.run_overrides:  # two sources for one fact: which seed would a single run use?
            raise ConfigError("run_overrides sets 'seed': give the seeds parameter instead (single runs use its first)")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"profile name {self.name!r} must be a plain folder name")
        spec = get_model_spec(self.model)
        try:
            spec.config_from_dict(dict(self.model_config))
        except ConfigError as exc:
            raise ConfigError(f"model_config (model {self.model!r}): {exc}") from None

    @classmethod
    def from_params(cls, **params: Any) -> "Profile":
        """Build from a notebook's parameters; unknown names are an error naming the valid ones."""
        return strict_from_dict(cls, params, "profile parameter")

    @property
    def root(self) -> Path:
        return Path(os.environ.get(_RESULTS_ENV) or self.results_dir) / self.name


class Lab:
    """Computes and stores the runs of one profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.root = profile.root
        self.store = Store(self.root / "runs")
        self._digests: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "Lab":
        """A Lab from a notebook's parameter variables: ``profile`` (the name) and every
        :class:`Profile` field present in ``namespace`` (e.g. ``globals()``)."""
        names = {f.name for f in dataclasses.fields(Profile)} - {"name"}
        params = {k: namespace[k] for k in names if k in namespace}
        return cls(Profile.from_params(name=namespace.get("profile", "smoke"), **params))

    def caveat(self) -> str:
        """Why our numbers and the paper's are not the same experiment (data, schedule, model size)."""
        p = self.profile
        sched = f"{p.iterations} iterations" if p.iterations else f"{p.run_overrides.get('epochs', '?')} epochs"
        return (f"Ours: profile `{p.name}`, trained on `{p.train_data}` for {sched} (crop {p.crop}, batch "
                f"{p.batch}), base model config {dict(p.model_config) or 'paper default'}, scored on "
                f"`{p.test_data}`{f' (first {p.eval_limit} images)' if p.eval_limit else ''}. The paper trained "
                "500 epochs on other data sets: compare trends within a column, not values across columns.")

    def render(self, item: str, title: str, rows: Sequence[Any], plot: str | None = "bars", xlabel: str = "",
               caveat: str | None = None, paper_params_m: Mapping[Any, float] | None = None,
               reference: str | Mapping[str, str] | None = None, footnotes: Sequence[str] = ()) -> Path:
        """Write ``<item>.csv/.md`` (and ``<item>.png`` unless ``plot`` is None) under the profile folder;
        ``reference``: the full-model row's setting, which each ablation row's verdict compares with;
        ``footnotes``: lines under the Markdown table."""
        from derainkit.experiments.tables import plot_sweep, plot_table, render_table

        p = self.profile
        md = render_table(self.root, item, title, rows, profile=p.name, protocols=list(p.protocols),
                          test_data=p.test_data, caveat=self.caveat() if caveat is None else caveat,
                          reference=reference, footnotes=footnotes)
        if plot == "bars":
            plot_table(self.root / f"{item}.png", title, rows, p.protocols[0], xlabel)
        elif plot == "sweep":
            plot_sweep(self.root / f"{item}.png", title, rows, p.protocols[0], xlabel, paper_params_m)
        return md

    def training_curves(self, name: str, title: str, runs: Mapping[str, Mapping[str, Any] | None]) -> Path | None:
        """``<name>.csv/.png``: the training-loss curves of stored train_eval records (label -> record), read from
        their run folders' log.csv; records without a run folder here (planned, or trained elsewhere) are left
        out. Returns the PNG, or None when no run has a log."""
        from derainkit.experiments.tables import render_curves

        logs = {label: self.root / rec["run"]["run_dir"] / "log.csv" for label, rec in runs.items()
                if rec and not is_planned(rec) and (rec.get("run") or {}).get("run_dir")}
        return render_curves(self.root, name, title, logs)

    def output_path(self, name: str) -> Path:
        """Where a notebook writes a figure of its own: the profile folder (a plan or fill walk: a scratch one)."""
        from derainkit.experiments.tables import _output_dir

        return _output_dir(self.root) / name

    def find_image(self, path: str | Path | None) -> Path:
        """An image file: ``path`` itself, the first image of a folder, or (None / missing) the first
        rainy image of the profile's test set, so figure notebooks run without real photos."""
        from derainkit.data import discover_pairs, resolve_data_path
        from derainkit.io import is_image_file

        if path:
            path = Path(path)
            if path.is_file():
                return path
            if path.is_dir():
                files = sorted(f for f in path.iterdir() if is_image_file(f))
                if files:
                    return files[0]
        return discover_pairs(resolve_data_path(self.profile.test_data))[0].rainy

    # ------------------------------------------------------------------ data identity
    def data_digest(self, spec: str, limit: int = 0) -> tuple[str, int]:
        """(sha256 digest of the file manifest, pair count) of a data folder, cached per Lab. A folder of
        the four rain types (``{drs,drd,nrs,nrd}/{input,target}``, UniRain) counts every type's pairs."""
        from derainkit.data import discover_pairs, manifest_digest, resolve_data_path

        cache_key = f"{spec}|{limit}"
        if cache_key not in self._digests:
            root = resolve_data_path(spec)
            if (root / "rain_types.json").is_file() or any((root / t / "input").is_dir()
                                                          for t in ("drs", "drd", "nrs", "nrd")):
                from derainkit.data.rain_types import rain_type_pairs

                pairs = [p for typed in rain_type_pairs(root).values() for p in typed]
            else:
                pairs = discover_pairs(root)
            if limit:
                pairs = pairs[:limit]
            self._digests[cache_key] = (manifest_digest(pairs), len(pairs))
        return self._digests[cache_key]

    def on(self, **changes: Any) -> "Lab":
        """This Lab with some profile parameters changed (e.g. ``test_data``, ``protocols``,
        ``eval_limit``), sharing the store: score a stored run on another test set, or photos by NIQE."""
        lab = Lab(dataclasses.replace(self.profile, **changes))
        lab._digests = self._digests
        return lab

    def compute(self, kind: str, spec: Mapping[str, Any], fn: Any) -> dict[str, Any]:
        """A stored record of any other computation (e.g. an intrinsic-dimension study): ``fn(key, folder)``
        returns the result dict; ``spec`` (JSON) names it, together with ``kind``."""
        full = {"kind": kind, **dict(spec)}
        return self.store.ensure(full, lambda key: {**fn(key, self.store.artefact_dir(key)),
                                                    "provenance": self._provenance()}, force=self.profile.force)

    def _test_spec(self) -> dict[str, Any]:
        p = self.profile
        digest, n = self.data_digest(p.test_data, p.eval_limit)
        return {"data": digest, "images": n, "protocols": sorted(p.protocols)}

    def _data_meta(self) -> dict[str, Any]:
        p = self.profile
        return {"test_data": p.test_data, "eval_limit": p.eval_limit}

    # ------------------------------------------------------------------ configs
    def run_config(self, model: str = "msgnn", model_config: Mapping[str, Any] | None = None,
                   **overrides: Any):
        """The RunConfig of a profile run: profile data/schedule/base model config, then ``overrides``."""
        from derainkit.train import RunConfig

        from derainkit.models import get_model_spec

        p = self.profile
        spec = get_model_spec(model)
        mc = dict(p.model_config) if model == p.model else {}
        mc.update(model_config or {})
        # Another family trains with its own paper's loss, optimizer and learning rate, on the profile's
        # data, crops, batch and schedule length (one budget for every row of a table).
        recipe = {} if model == p.model else {k: v for k, v in spec.run_recipe().items() if k not in _SCHEDULE_KEYS}
        data = dict(recipe, model=model, model_config=mc, train_data=p.train_data, val_data=None,
                    iterations=p.iterations, crop=p.crop, batch=p.batch, device=p.device, seed=p.seeds[0],
                    out_dir=str(self.root / "train"))
        data.update(p.run_overrides)
        data.update(overrides)
        if "epochs" in data or data.get("iterations") is None:  # an epoch-counted schedule (paper profile)
            data.pop("iterations", None)
        if not spec.uses_exemplar and "exemplar" not in overrides:
            data["exemplar"] = "none"  # the family has no exemplar input (a policy would only be recorded unused)
        return RunConfig.from_dict(data)

    def _run_identity(self, cfg) -> dict[str, Any]:
        from derainkit.train.tasks import get_task

        ident = cfg.identity()
        ident["train_data"] = self.data_digest(cfg.train_data)[0]
        task_config = ident.get("task_config") or {}
        for key in get_task(cfg.resolved_task).data_keys:  # folders in task options: their content, not path
            if task_config.get(key):
                task_config[key] = self.data_digest(task_config[key])[0]
        ident.pop("val_data", None)
        ident.pop("device", None)  # the same run on another device is the same experiment
        return ident

    # ------------------------------------------------------------------ experiments
    def train_eval(self, model: str = "msgnn", model_config: Mapping[str, Any] | None = None,
                   **overrides: Any) -> dict[str, Any]:
        """Train under the profile (``overrides``: RunConfig keys) and score on the profile's test set."""
        cfg = self.run_config(model, model_config, **overrides)
        spec = {"kind": "train_eval", "run": self._run_identity(cfg), "test": self._test_spec()}

        def compute(key: str) -> dict[str, Any]:
            weights, run = self._train(cfg)
            result = self._evaluate(key, cfg.model, weights)
            result.update(run=run, run_config=cfg.to_dict())
            return result

        return self.store.ensure(spec, compute, force=self.profile.force)

    def train_eval_seeds(self, model: str = "msgnn", model_config: Mapping[str, Any] | None = None,
                         **overrides: Any) -> dict[str, Any]:
        """:meth:`train_eval` once per profile seed (one stored record each, so seeds accumulate and are
        reused), folded into one row: metric means with their standard deviations
        (:func:`derainkit.experiments.seeds.replicate`), the seeds' records under ``records``."""
        from derainkit.experiments.seeds import replicate

        if "seed" in overrides:
            raise ConfigError("train_eval_seeds trains every profile seed: set the profile's seeds, not seed=")
        return replicate([self.train_eval(model, model_config, **overrides, seed=s) for s in self.profile.seeds])

    def eval_weights(self, model: str, weights: str | Path, model_config: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
        """Score given weights (official peers, or the kit's shipped model) on the profile's test set."""
        from derainkit.data import file_sha256

        weights = Path(weights)
        if not weights.is_file():
            raise DerainkitError(f"{weights}: weights file not found")
        spec = {"kind": "eval_weights", "model": model, "weights_sha256": file_sha256(weights),
                "model_config": dict(model_config or {}), "test": self._test_spec()}

        def compute(key: str) -> dict[str, Any]:
            result = self._evaluate(key, model, weights, model_config)
            result["weights_file"] = weights.name
            return result

        return self.store.ensure(spec, compute, force=self.profile.force)

    def eval_input(self) -> dict[str, Any]:
        """Score the rainy test images themselves (the 'input' row)."""
        spec = {"kind": "eval_input", "test": self._test_spec()}
        return self.store.ensure(spec, lambda key: self._evaluate(key, None, None), force=self.profile.force)

    def derain_image(self, record: Mapping[str, Any], image: str | Path, max_side: int = 512,
                     weights: str | Path | None = None, layers: bool = False) -> Path:
        """Derain one image (downscaled to ``max_side``) with a stored run's model: a train_eval record, or
        an eval_weights record together with its ``weights`` file (a row of several seeds: its first seed's
        model). The PNG (and the resized input as
        ``<key>/input.png``, and with ``layers`` the rain layer as ``<key>/rain.png``) is stored, keyed by
        run, image content and size."""
        from derainkit.data import file_sha256
        from derainkit.experiments.seeds import seed_records

        record = seed_records(record)[0]
        image = Path(image)
        if not image.is_file():
            raise DerainkitError(f"{image}: image not found")
        spec = {"kind": "derain_image", "run": record["key"], "image_sha256": file_sha256(image),
                "max_side": int(max_side)}
        if layers:
            spec["layers"] = True  # only when asked: earlier records keep their keys

        def compute(key: str) -> dict[str, Any]:
            from derainkit.io import load_image, write_image

            if weights is not None:
                model, path = record["spec"]["model"], Path(weights)
            else:
                model, path = record["run_config"]["model"], self._weights_of(record)
            pixels = _fit(load_image(image).pixels, max_side)
            _, predictor = self._predictor(model, path)
            out, plan = predictor(pixels)
            folder = self.store.artefact_dir(key)
            write_image(folder / "input.png", pixels)
            write_image(folder / "derained.png", out)
            outputs = {"input": f"{key}/input.png", "derained": f"{key}/derained.png"}
            if layers:  # the rain layer of a layer-separating model (NLCL), same size and tiling
                from derainkit.infer import Predictor

                rain = Predictor(predictor.model.rain_layer(), predictor.bytes_per_pixel, device=predictor.device,
                                 whole_frame_norm=predictor.whole_frame_norm)(pixels)[0]
                write_image(folder / "rain.png", rain)
                outputs["rain"] = f"{key}/rain.png"
            return {"image": image.name, "size": list(pixels.shape[:2]), "tiling": plan.to_dict(),
                    "outputs": outputs, "provenance": self._provenance()}

        rec = self.store.ensure(spec, compute, force=self.profile.force, after=[record])
        if is_planned(rec):  # a plan/fill walk: the image is made when its record is computed
            return self.store.artefact_dir(rec["key"]) / "derained.png"
        return self.store.root / rec["outputs"]["derained"]

    def input_image(self, record_key_png: Path) -> Path:
        """The resized input stored beside a :meth:`derain_image` output."""
        return Path(record_key_png).parent / "input.png"

    def training_cost(self, model: str, bench: str | Path = "results/bench") -> str:
        """Why ``model`` is not trained in this profile, with the hours its schedule would take at the training
        step time `make bench` measured (``peers_step.csv``, else the quick run's; batch 8, 64×64, scaled
        by batch × crop² to the profile's)."""
        from derainkit.experiments.costs import bench_root, peer_figures

        p = self.profile
        root = bench_root(bench)
        step = next((f for name in ("peers_step.csv", "peers_step_quick.csv") for f in peer_figures(root / name)
                     if f.model == model and f.task == "train_step"), None)
        if step is None or not p.iterations:
            return f"not trained in profile `{p.name}` (add it to train_peers; `make bench` measures its step)"
        scale = p.batch * p.crop ** 2 / (8 * 64 ** 2)
        hours = step.seconds * scale * p.iterations / 3600
        return (f"not trained in profile `{p.name}`: about {hours:.1f} h for {p.iterations} iterations at "
                f"{step.seconds:.1f} s per batch-8 64×64 step ({step.source}); add it to train_peers to run it")

    # ------------------------------------------------------------------ internals
    def _train(self, cfg) -> tuple[Path, dict[str, Any]]:
        from derainkit.experiments.claims import Claim

        run_dir = cfg.run_dir()
        # One trainer per run folder: two records can share a run (one model scored on two test sets), and
        # two trainers appending to one log and checkpoint would corrupt both. Others wait for it.
        while (claim := Claim.acquire(run_dir.with_name(run_dir.name + ".claim"))) is None:
            time.sleep(self.store.poll_seconds)
        with claim:
            return self._train_claimed(cfg, run_dir)

    def _train_claimed(self, cfg, run_dir: Path) -> tuple[Path, dict[str, Any]]:
        from derainkit.train import train

        weights = run_dir / "model.safetensors"
        if weights.is_file() and not self.profile.force:
            return weights, {"run_dir": _rel(run_dir, self.root), "reused_weights": True}
        resume = (run_dir / "checkpoints" / "latest.pt").is_file() and not self.profile.force
        if self.profile.force and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        result = train(cfg, resume=resume, progress=self.profile.progress)
        if not result.finished or result.weights is None:
            raise DerainkitError(f"training run {run_dir} did not finish")
        return result.weights, {"run_dir": _rel(run_dir, self.root), "iterations": result.total_iterations,
                                "device": result.device, "precision": result.precision,
                                "resumed": bool(resume), "train_seconds_per_iteration": _seconds_per_iteration(result)}

    def _weights_of(self, record: Mapping[str, Any]) -> Path:
        """The exported weights of a stored train_eval run, retrained when they are not on this machine."""
        from derainkit.train import RunConfig

        weights = trained_weights_path(record, self.root)
        if not weights.is_file():
            weights, _ = self._train(RunConfig.from_dict({**record["run_config"], "out_dir": str(self.root / "train")}))
        return weights

    def _predictor(self, model: str, weights: Path | None, model_config: Mapping[str, Any] | None = None):
        from derainkit.infer import load_predictor

        return load_predictor(model, weights, dict(model_config) if model_config else None, device=self.profile.device)

    def _evaluate(self, key: str, model: str | None, weights: Path | None,
                  model_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from derainkit.data import discover_pairs, resolve_data_path
        from derainkit.metrics.evaluate import evaluate

        p = self.profile
        root = resolve_data_path(p.test_data)
        pairs = discover_pairs(root)
        if p.eval_limit:
            pairs = pairs[: p.eval_limit]
        out_dir = self.store.artefact_dir(key)
        extra: dict[str, Any] = {}
        if model is None:
            predict, quantize, device = None, "round", "cpu"
        else:
            spec, predictor = self._predictor(model, weights, model_config)
            quantize, device = spec.official_quantize, str(predictor.device)
            extra["parameters"] = sum(t.numel() for t in predictor.model.parameters())
            extra["trainable_parameters"] = sum(t.numel() for t in predictor.model.parameters() if t.requires_grad)

            predict = predictor.predict_fn()

        result = evaluate(pairs, predict, out_dir, sorted(p.protocols), quantize=quantize, data_root=root,
                          meta={"model": model}, device=device, progress=p.progress)
        _strip_volatile(out_dir)
        return {"metrics": result.means, "n_images": result.n_images, "quantize": quantize,
                "per_image": f"{key}/per_image.csv", **self._data_meta(), **extra,
                "provenance": self._provenance(device)}

    def _provenance(self, device: str = "cpu") -> dict[str, Any]:
        from derainkit.provenance import provenance

        return provenance(device)


def trained_weights_path(record: Mapping[str, Any], root: Path) -> Path:
    """Where a train_eval record's exported weights lie under a profile's results folder ``root`` (the
    training folders are gitignored, so on a fresh clone the file is absent and the run is retrained)."""
    from derainkit.train import RunConfig

    return RunConfig.from_dict({**record["run_config"], "out_dir": str(Path(root) / "train")}).run_dir() / "model.safetensors"


def _seconds_per_iteration(result) -> float | None:
    """Training wall time per iteration, from the run's log (its last row holds the total seconds)."""
    import csv

    try:
        with open(result.log, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return round(float(rows[-1]["seconds"]) / max(1, result.total_iterations), 4)
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _strip_volatile(out_dir: Path) -> None:
    """Keep only per_image.csv and manifest.csv beside a record (the record holds the summary)."""
    for name in ("summary.json", "summary.md"):
        (out_dir / name).unlink(missing_ok=True)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _fit(pixels, max_side: int):
    """Downscale (area) so the longer side is at most max_side; real photos are large for a CPU."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return out[0].permute(1, 2, 0).clamp(0, 1).numpy()

