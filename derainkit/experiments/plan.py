"""What a reproduction will cost before it runs: walk notebooks without computing, list missing records.

A *walk* executes an item's notebook with the store in ``plan`` (or ``fill``) mode (see
:mod:`derainkit.experiments.store`): every record the notebook asks for is reused when stored, and
otherwise noted and replaced by a placeholder, so the notebook goes on and names all the others.
Tables and figures of a walk go to a scratch folder; the committed ones are untouched.

A record whose *spec* depends on another record's content (UniRain's distilled training set is made
from the distillation record) cannot be named before that record exists: the walk then stops at that
cell and the plan says so ("partial"); ``fill`` computes what is known and walks again.

Estimates come from stored records of the same kind and model (this profile's first, else any
profile's), scaled by the work (iterations × batch × crop², or image count): they are estimates on
the machines those records ran on, labelled as such. A model config no record has (a larger patch,
another sub-network count) costs more or less per step than the work says; ``--calibrate`` times a few
training steps of it and of the stored config on this machine and scales by their ratio.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from derainkit.errors import DerainkitError

REPO = Path(__file__).resolve().parents[2]

# make target -> notebook (the Makefile's NB_<item> lines say the same; a test keeps them in step)
ITEMS = {"table1": "table1_benchmarks", "table2": "table2_components", "table3": "table3_stride",
         "table4": "table4_patch_size", "table5": "table5_neighbours", "fig7": "fig7_subnetworks",
         "fig8": "fig8_multiscale", "fig9": "fig9_exemplar", "code-vs-paper": "extra_code_vs_paper",
         "exemplar-policies": "extra_exemplar_policies", "protocol-gap": "extra_protocol_gap",
         "nlcl": "nlcl_real_rain", "unirain": "unirain_four_types"}


def resolve_items(items: Sequence[str] | str | None) -> list[str]:
    """Item names (``table2``, ...), all when empty; unknown ones are an error naming the valid ones."""
    if isinstance(items, str):
        items = [i for i in items.replace(",", " ").split() if i]
    items = list(items or ITEMS)
    unknown = [i for i in items if i not in ITEMS]
    if unknown:
        raise DerainkitError(f"unknown item(s) {unknown}; items: {list(ITEMS)}")
    return items


# ---------------------------------------------------------------------------------------- estimates
def _work(spec: Mapping[str, Any]) -> float | None:
    """Relative cost of a record: training iterations × batch × crop² (+ scoring), or images scored."""
    run = spec.get("run") if isinstance(spec.get("run"), Mapping) else None
    if spec.get("kind") == "train_eval" and run:
        if not run.get("iterations"):
            return None  # an epoch-counted schedule: its length depends on the data set
        return float(run["iterations"]) * float(run.get("batch") or 1) * float(run.get("crop") or 1) ** 2
    test = spec.get("test")
    if isinstance(test, Mapping) and test.get("images"):
        return float(test["images"])
    return 1.0


def _model(spec: Mapping[str, Any]) -> Any:
    run = spec.get("run")
    return run.get("model") if isinstance(run, Mapping) else spec.get("model")


StepCost = Callable[[Mapping[str, Any]], "float | None"]  # run identity -> seconds per training step


def _config_of(record: Mapping[str, Any]) -> Any:
    return (record["spec"].get("run") or {}).get("model_config")


def estimate_seconds(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                     step_cost: StepCost | None = None) -> tuple[float | None, str]:
    """Seconds ``spec`` would take, from the median of similar stored records scaled by the work
    (same kind and model; same model config preferred), and a note; None when nothing similar is stored.

    When only other model configs of the model are stored, the estimate scales the records of the most
    common one; with ``step_cost`` (seconds per training step of a run identity, measured on this machine)
    it is also multiplied by the ratio of the two configs' step times at ``spec``'s batch and crop,
    otherwise the note says the model size differs."""
    work = _work(spec)
    note = ""
    if work is None:
        return None, note
    same = [r for r in records if r.get("spec", {}).get("kind") == spec.get("kind") and r.get("wall_seconds")
            and _model(r["spec"]) == _model(spec) and _work(r["spec"])]
    ratio = 1.0
    if spec.get("kind") == "train_eval" and same:
        run = spec.get("run") or {}
        closer = [r for r in same if _config_of(r) == run.get("model_config")]
        if not closer:
            counts = Counter(json.dumps(_config_of(r), sort_keys=True) for r in same)
            reference = json.loads(counts.most_common(1)[0][0])
            closer = [r for r in same if _config_of(r) == reference]
            cost = step_cost(run) if step_cost else None
            cost_ref = step_cost({**run, "model_config": reference}) if cost else None
            if cost and cost_ref:
                ratio = cost / cost_ref
                note = f", another model config: × {ratio:.2f} by step times measured here"
            else:
                note = ", another model size: scale by its cost"
        same = closer
    if not same:
        return None, note
    return round(ratio * statistics.median(float(r["wall_seconds"]) * work / _work(r["spec"]) for r in same), 1), note


def retrain_seconds(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]], root: Path) -> tuple[str, float] | None:
    """For a ``derain_image`` spec whose train_eval run is stored but whose weights are not under the
    profile's results folder ``root`` (training folders are not committed, so on a fresh clone they never
    are): the run's key and the seconds retraining it takes, from the record that trained it. None
    otherwise, or when no record says how long the training took."""
    from derainkit.experiments.lab import trained_weights_path

    if spec.get("kind") != "derain_image":
        return None
    run = next((r for r in records if r.get("key") == spec.get("run")), None)
    if run is None or (run.get("spec") or {}).get("kind") != "train_eval" or "run_config" not in run:
        return None
    if trained_weights_path(run, root).is_file():
        return None
    # the record that trained the run: this one, or one sharing its folder (a record that reused weights)
    run_dir = (run.get("run") or {}).get("run_dir")
    trainers = [r for r in [run, *records] if (r.get("run") or {}).get("run_dir") == run_dir
                and not r["run"].get("reused_weights")]
    for r in trainers:
        per_iteration, iterations = r["run"].get("train_seconds_per_iteration"), r["run"].get("iterations")
        if per_iteration and iterations:
            return run["key"], round(float(per_iteration) * int(iterations), 1)
    walls = [float(r["wall_seconds"]) for r in trainers if r.get("wall_seconds")]
    return (run["key"], walls[0]) if walls else None  # older records: training and scoring together


def busy_load() -> float | None:
    """The 1-minute load average when it is beyond what the timing's own threads explain (one per core, plus
    one): other work is running, and timings taken then are slowed unevenly (a step's memory-bound parts more
    than its compute-bound ones), else None."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    return load if load >= (os.cpu_count() or 1) + 1.0 else None


def measured_step_cost(steps: int = 2, device: str = "cpu") -> StepCost:
    """A :data:`StepCost` that times each distinct run identity once (see
    :func:`derainkit.train.step_time.time_training_step`); None for runs that cannot be timed here."""
    from tqdm.auto import tqdm

    from derainkit.train import step_time

    cache: dict[str, float | None] = {}

    def cost(run: Mapping[str, Any]) -> float | None:
        try:
            timed = step_time.timing_config(run, device).to_dict()
        except DerainkitError as exc:
            tqdm.write(f"not timed ({exc})", file=sys.stderr)
            return None
        # what is timed, less the seed (which pixels a step sees, not its work): each config once
        key = json.dumps({k: v for k, v in timed.items() if k != "seed"}, sort_keys=True, default=str)
        if key not in cache:
            what = json.dumps(_non_default(run.get("model"), run.get("model_config") or {}), sort_keys=True)
            try:
                load = busy_load()
                cache[key] = step_time.time_training_step(run, steps=steps, device=device)
                tqdm.write(f"timed {run.get('model')} {what} batch {run.get('batch')} crop {run.get('crop')}: "
                           f"{cache[key]:.2f} s/step" + (f" (machine busy: 1-min load {load:.1f} on "
                                                         f"{os.cpu_count()} cores; this ratio is unreliable)"
                                                         if load else ""), file=sys.stderr)
            except DerainkitError as exc:
                tqdm.write(f"not timed ({exc})", file=sys.stderr)
                cache[key] = None
        return cache[key]

    return cost


def all_records(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Profile -> records, for estimates from other profiles' stores."""
    from derainkit.experiments.store import Store

    out = {}
    for runs in sorted(Path(results_dir).glob("*/runs")):
        try:
            out[runs.parent.name] = Store(runs).records()
        except DerainkitError:
            continue
    return out


# ---------------------------------------------------------------------------------------- walks
@dataclass
class Walk:
    """What one walk of one item's notebook saw."""

    item: str
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""  # the cell that stopped the walk (a record it needed was only a placeholder, or a bug)

    def keys(self, *events: str) -> list[str]:
        return list(dict.fromkeys(e["key"] for e in self.events if e["event"] in events))

    @property
    def missing(self) -> list[str]:
        """Records the notebook needs that are not stored (planned, claimed by a worker, or blocked)."""
        done = set(self.keys("reused", "computed"))
        return [k for k in self.keys("planned", "claimed", "blocked") if k not in done]


def _set_environ(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def scoped_environ(**values: str | None) -> Iterator[None]:
    """Set (None: unset) environment variables for the block; the kernels papermill starts inherit them."""
    old = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(old)


def notebook_parameters(item: str, profile: str, pairs: Sequence[tuple[str, str]] = (),
                        results_dir: str | Path | None = None) -> dict[str, Any]:
    """The parameters ``make <item> PROFILE=<profile>`` passes (the profile file, then ``pairs``)."""
    from derainkit.experiments.run_notebook import resolve_parameters

    params = resolve_parameters(REPO / "notebooks" / f"{ITEMS[item]}.ipynb", profile, pairs)
    params.setdefault("results_dir", str(Path(results_dir or REPO / "results").resolve()))
    return params


def walk(item: str, profile: str, mode: str = "plan", pairs: Sequence[tuple[str, str]] = (),
         only: Sequence[str] | None = None, results_dir: str | Path | None = None) -> Walk:
    """Execute ``item``'s notebook with the store in ``mode`` ("plan": compute nothing; "fill": compute the
    missing records no other worker holds, or only those in ``only``) and return what it saw."""
    from derainkit.experiments.run_notebook import NotebookError, run

    params = notebook_parameters(item, profile, pairs, results_dir)
    with tempfile.TemporaryDirectory(prefix=f"derainkit-walk-{item}-") as tmp:
        log = Path(tmp) / "events.jsonl"
        result = Walk(item)
        with scoped_environ(DERAINKIT_STORE_MODE=mode, DERAINKIT_STORE_LOG=str(log), DERAINKIT_WALK_OUT=str(Path(tmp) / "out"),
                      DERAINKIT_STORE_ONLY=",".join(only) if only else None):
            (Path(tmp) / "out").mkdir()
            try:
                run(REPO / "notebooks" / f"{ITEMS[item]}.ipynb", Path(tmp) / f"{item}.ipynb", params, REPO / "notebooks",
                    progress=False)
            except NotebookError as exc:  # the executed copy is in tmp, about to go: report the failure alone
                result.error = exc.reason
            except DerainkitError as exc:
                result.error = str(exc)
        if log.is_file():
            result.events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return result


# ---------------------------------------------------------------------------------------- the plan
@dataclass
class PlanEntry:
    key: str
    kind: str
    items: list[str]
    what: str
    status: str            # missing | claimed (a worker computes it now) | after <key> (needs that record first)
    estimate_s: float | None
    estimate_from: str     # which store's records the estimate scales
    spec: dict[str, Any]


def describe_spec(spec: Mapping[str, Any]) -> str:
    """A short human description of a record's spec (model, schedule, what differs from defaults)."""
    kind = spec.get("kind")
    if kind == "train_eval":
        run = spec.get("run") or {}
        cfg = _non_default(run.get("model"), run.get("model_config") or {})
        sched = f"{run['iterations']} it" if run.get("iterations") else f"{run.get('epochs', '?')} epochs"
        extra = {k: v for k, v in run.items() if k in ("task_config", "exemplar", "lr", "seed", "loss") and v}
        return (f"train {run.get('model')} {json.dumps(cfg, sort_keys=True)} {sched}, batch {run.get('batch')}, "
                f"crop {run.get('crop')}{' ' + json.dumps(extra, sort_keys=True) if extra else ''}; score "
                f"{(spec.get('test') or {}).get('images', '?')} images")
    if kind in ("eval_weights", "eval_input"):
        return f"score {spec.get('model', 'the input')} on {(spec.get('test') or {}).get('images', '?')} images"
    if kind == "derain_image":
        return f"derain one image (max side {spec.get('max_side')}) with record {spec.get('run')}"
    return str(kind)


def _non_default(model: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a canonical model config that differ from the model's defaults."""
    from derainkit.train.config import canonical_model_config

    try:
        default = canonical_model_config(str(model), {})
    except DerainkitError:
        return dict(config)
    return {k: v for k, v in config.items() if default.get(k, object()) != v}


def plan(items: Sequence[str] | str | None, profile: str, pairs: Sequence[tuple[str, str]] = (),
         results_dir: str | Path | None = None, progress: bool = True, step_cost: StepCost | None = None,
         ) -> tuple[list[PlanEntry], list[Walk]]:
    """The records a run of ``items`` under ``profile`` would compute (each once, with the items that need
    it), and the walks (their errors say where a plan is partial). ``step_cost`` (e.g.
    :func:`measured_step_cost`) scales estimates for model configs that no stored record has."""
    from tqdm.auto import tqdm

    results_dir = Path(results_dir or os.environ.get("DERAINKIT_RESULTS") or REPO / "results")
    # estimates: this profile's records here, then in the repository's results, then other profiles'
    here, repo = all_records(results_dir), all_records(REPO / "results") if results_dir != REPO / "results" else {}
    sources = [(profile, here.get(profile, [])), (profile, repo.get(profile, []))]
    sources += [(name, recs) for store in (here, repo) for name, recs in store.items() if name != profile]
    entries: dict[str, PlanEntry] = {}
    retrained: set[str] = set()  # runs whose retraining is already in an estimate
    walks = []
    for item in tqdm(resolve_items(items), desc=f"plan ({profile})", disable=not progress):
        w = walk(item, profile, "plan", pairs, results_dir=results_dir)
        walks.append(w)
        missing = set(w.missing)
        for e in w.events:
            if e["key"] not in missing:
                continue
            if e["key"] in entries:
                if item not in entries[e["key"]].items:
                    entries[e["key"]].items.append(item)
                continue
            est, source = None, ""
            for name, recs in sources:
                est, note = estimate_seconds(e["spec"], recs, step_cost)
                if est is not None:
                    source = f"{name} records{note}"
                    break
            retrain = retrain_seconds(e["spec"], here.get(profile, []), results_dir / profile)
            if retrain:  # the image needs its run's model, and that model is not on this machine
                run_key, seconds = retrain
                seconds, what = (0.0, f"after retraining {run_key}") if run_key in retrained else \
                    (seconds, f"+ {_duration(seconds)} retraining {run_key} from its record (its weights are not here)")
                retrained.add(run_key)
                est, source = (est or 0.0) + seconds, f"{source}, {what}" if source else what
            status = {"planned": "missing", "claimed": "claimed"}.get(e["event"], f"after {','.join(e.get('after', []))}")
            entries[e["key"]] = PlanEntry(e["key"], e["kind"] or "?", [item], describe_spec(e["spec"]), status,
                                          est, source if est is not None else "", e["spec"])
    return list(entries.values()), walks


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def item_budget(entries: Sequence[PlanEntry], walks: Sequence[Walk],
                record_seconds: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per item, in walk order: the stored records it uses and their measured wall time, and the missing ones
    with their estimate. A record shared by several items counts under the first that uses it (the others
    list it as shared), so the column sums are the whole profile's cost."""
    first: dict[str, str] = {}
    for w in walks:
        for key in w.keys("reused", "computed", "planned", "claimed", "blocked"):
            first.setdefault(key, w.item)
    estimate = {e.key: e.estimate_s for e in entries}
    rows = []
    for w in walks:
        stored = [k for k in w.keys("reused", "computed") if k not in estimate]
        own = [k for k in stored if first.get(k) == w.item]
        todo = [k for k in w.missing if first.get(k) == w.item]
        known = [estimate[k] for k in todo if estimate.get(k) is not None]
        rows.append({"item": w.item, "stored": len(own), "shared": len(stored) - len(own),
                     "measured_s": sum(record_seconds.get(k, 0.0) for k in own), "missing": len(todo),
                     "estimate_s": sum(known), "unknown": len(todo) - len(known)})
    return rows


def plan_markdown(entries: Sequence[PlanEntry], walks: Sequence[Walk], profile: str,
                  record_seconds: Mapping[str, float] | None = None) -> str:
    """The plan as a Markdown table with a total, a line per partial walk, and (given the stored records'
    wall seconds) the budget per item: measured so far and estimated to go."""
    lines = [f"# Plan: profile `{profile}`", "",
             "| key | kind | items | what | status | estimate |", "|---|---|---|---|---|---|"]
    for e in entries:
        est = f"{_duration(e.estimate_s)} ({e.estimate_from})" if e.estimate_s is not None else "unknown"
        lines.append(f"| {e.key} | {e.kind} | {', '.join(e.items)} | {e.what} | {e.status} | {est} |")
    known = [e.estimate_s for e in entries if e.estimate_s is not None]
    lines += ["", f"{len(entries)} records to compute; estimated {_duration(sum(known))} for the {len(known)} with an "
              "estimate (scaled from stored records of the same kind and model, on the machines those ran on)."]
    for w in walks:
        if w.error:
            lines.append(f"- `{w.item}` is partial: its walk stopped at {w.error}; records that depend on the "
                         "missing ones are named once those exist (`fill` walks again).")
    if record_seconds is not None:
        rows = item_budget(entries, walks, record_seconds)
        lines += ["", f"## Budget per item, profile `{profile}`", "",
                  "Measured: the summed wall time of the stored records the item is the first to use (training and "
                  "scoring, on the machines that ran them; a record shared with an earlier item is counted there). "
                  "To go: the estimates above.", "",
                  "| item | records stored (+ shared) | measured | records to go | estimated to go |", "|---|---|---|---|---|"]
        for r in rows:
            unknown = f" (+ {r['unknown']} unknown)" if r["unknown"] else ""
            lines.append(f"| {r['item']} | {r['stored']} (+ {r['shared']}) | {_duration(r['measured_s'])} | "
                         f"{r['missing']} | {_duration(r['estimate_s'])}{unknown} |")
        done, to_go = sum(r["measured_s"] for r in rows), sum(r["estimate_s"] for r in rows)
        lines.append(f"| all | {sum(r['stored'] for r in rows)} | {_duration(done)} | "
                     f"{sum(r['missing'] for r in rows)} | {_duration(to_go)} |")
    return "\n".join(lines) + "\n"
