"""What the UniRain notebook computes, through a :class:`~derainkit.experiments.lab.Lab`: four rain types of
data from a paired set, the offline distillation (keep-list and its validation on corrupted pairs), and
the trained variants scored per rain type.

Generated data (the four-type layouts, the naive and distilled training sets) lives in the kit's cache
(``$DERAINKIT_CACHE``), keyed by the digest of its source and its parameters, and is regenerated
deterministically on a fresh machine; records (keep-lists, metrics) live in the results store.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from derainkit.experiments.lab import Lab


def _cache(*parts: str) -> Path:
    from derainkit.data.paths import cache_dir

    return cache_dir().joinpath("unirain", *parts)


def _build_once(out: Path, make) -> Path:
    """``make(tmp)`` into a temporary folder renamed to ``out`` (a half-built folder is never used)."""
    if out.is_dir():
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def four_types(source: str, start: int = 0, count: int = 0, seed: int = 0, max_side: int | None = None,
               types: Sequence[str] = ("drs", "drd", "nrs", "nrd")) -> Path:
    """The ``{drs,drd,nrs,nrd}/{input,target}`` layout of pairs ``start .. start+count`` of a paired data set:
    its real rainy pairs as day streaks (``drs``), its clean images rendered as raindrops, night streaks
    and night raindrops (``derainkit.data.rain_types``, seeded)."""
    from derainkit.data import discover_pairs, manifest_digest, resolve_data_path
    from derainkit.data.rain_types import make_rain_types

    pairs = discover_pairs(resolve_data_path(source))
    pairs = pairs[start:start + count] if count else pairs[start:]
    key = f"{manifest_digest(pairs)[:12]}-s{seed}-m{max_side or 0}-{'-'.join(types)}"

    def make(tmp: Path) -> None:
        drs = tmp.parent / f"{tmp.name}-drs"  # the real pairs of the slice, as a folder make_rain_types reads
        for p in pairs:
            for side, src in (("rain", p.rainy), ("norain", p.clean)):
                (drs / side).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, drs / side / f"{p.id}{Path(src).suffix}")
        make_rain_types([p.clean for p in pairs], tmp, types=tuple(types), seed=seed,
                        drs_from=drs if "drs" in types else None, max_side=max_side, names=[p.id for p in pairs])
        shutil.rmtree(drs, ignore_errors=True)

    return _build_once(_cache("types", key), make)


def distillation(lab: Lab, pool: Path, references: str | Path, config: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], Path, Path]:
    """Distil the four-type ``pool`` against real ``references`` (stored keep-list); returns (record,
    naive training set = the whole pool, distilled training set = the kept pairs)."""
    from derainkit.data import file_sha256
    from derainkit.data.distill import DistillConfig, KeepList, candidates_from_rain_types, distill, write_kept_layout

    cfg = DistillConfig(**(config or {}))
    refs = sorted(p for p in Path(references).iterdir() if p.is_file())
    spec = {"pool": lab.data_digest(str(pool))[0], "references": [file_sha256(p) for p in refs],
            "config": cfg.to_dict()}

    def run(key: str, folder: Path) -> dict[str, Any]:
        keep = distill(candidates_from_rain_types(pool), references, cfg)
        keep.write(folder / "keeplist")
        return {"keeplist": f"{key}/keeplist.json", "keeplist_version": keep.version, "kept": len(keep.kept),
                "total": len(keep.rows), "kept_by_type": _by_type(keep.rows)}

    rec = lab.compute("distill", spec, run)
    keep = KeepList.read(lab.store.root / rec["keeplist"])
    naive = _build_once(_cache("naive", rec["key"]), lambda tmp: write_kept_layout(keep, tmp, "all"))
    kept = _build_once(_cache("distilled", rec["key"]), lambda tmp: write_kept_layout(keep, tmp, "kept"))
    return rec, naive, kept


def _by_type(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    types = sorted({r["rain_type"] for r in rows})
    return {t: f"{sum(r['keep'] for r in rows if r['rain_type'] == t)}/{sum(r['rain_type'] == t for r in rows)}"
            for t in types}


def filter_validation(lab: Lab, pool: Path, references: str | Path, fraction: float = 0.3, seed: int = 1,
                      config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Precision and recall of the distillation's rejections on a pool with a known corrupted subset."""
    from derainkit.data import file_sha256
    from derainkit.data.distill import DistillConfig, candidates_from_rain_types, validate_filter

    cfg = DistillConfig(**(config or {}))
    refs = sorted(p for p in Path(references).iterdir() if p.is_file())
    spec = {"pool": lab.data_digest(str(pool))[0], "references": [file_sha256(p) for p in refs],
            "config": cfg.to_dict(), "fraction": fraction, "seed": seed}

    def run(key: str, folder: Path) -> dict[str, Any]:
        report, keep = validate_filter(candidates_from_rain_types(pool), references, cfg, fraction, seed)
        keep.write(folder / "validation_keeplist")
        return {"report": report}

    return lab.compute("distill_validation", spec, run)


def validation_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per vote rule and judge: precision and recall of rejecting the corrupted pairs."""
    rep = record["report"]
    rows = []
    for group in ("rules", "judges"):
        for name, e in rep[group].items():
            rows.append({"filter": f"{'rule' if group == 'rules' else 'judge'} {name}", "precision": e["precision"],
                         "recall": e["recall"], "clean pairs kept": e["clean_kept"],
                         **{f"recall: {k}": v for k, v in e["recall_by_kind"].items()}})
    return rows


def per_type(lab: Lab, test_root: Path, types: Sequence[str], **train_eval: Any) -> dict[str, dict[str, Any]]:
    """The record of one trained variant scored on each rain type's test folder (``<test_root>/<type>``)."""
    return {t: lab.on(test_data=str(test_root / t)).train_eval(**train_eval) for t in types}


def per_type_rows(variants: dict[str, dict[str, dict[str, Any]]], protocol: str) -> list[dict[str, Any]]:
    """Rows: variant × (PSNR per type, mean over types), ``protocol``."""
    rows = []
    for name, recs in variants.items():
        row: dict[str, Any] = {"variant": name}
        values = []
        for t, rec in recs.items():
            m = rec["metrics"][protocol]
            row[f"{t} PSNR / SSIM"] = f"{m['psnr']:.2f} / {m['ssim']:.4f}"
            values.append((m["psnr"], m["ssim"]))
        row["mean PSNR"] = sum(v[0] for v in values) / len(values)
        row["mean SSIM"] = sum(v[1] for v in values) / len(values)
        rows.append(row)
    return rows


def notebook_settings(profile: str) -> dict[str, Any]:
    """The UniRain notebook's parameters at ``profile``: its declared defaults, then the profile file's
    values for it, so Table 1 trains exactly the notebook's main variant (one record, one training run)."""
    from derainkit.experiments.plan import ITEMS, REPO
    from derainkit.experiments.run_notebook import _literal_defaults, declared_parameters, resolve_parameters

    nb = REPO / "notebooks" / f"{ITEMS['unirain']}.ipynb"
    return {**_literal_defaults(declared_parameters(nb)), **resolve_parameters(nb, profile, [])}


def table1_record(lab: Lab, profile: str | None = None) -> dict[str, Any]:
    """UniRain's main variant (asymmetric MoE, reweighted, naive four-type mix), trained as the UniRain notebook
    trains it at this profile (four-type pool from the profile's training pairs), scored on ``lab``'s test set."""
    p = notebook_settings(profile or lab.profile.name)
    pool = four_types(lab.profile.train_data, count=p["pool_count"], seed=0, max_side=p["data_side"])
    return lab.train_eval(model="unirain", model_config=dict(p["unirain_model_config"]),
                          task_config=dict(p["unirain_task"]), train_data=str(pool))
