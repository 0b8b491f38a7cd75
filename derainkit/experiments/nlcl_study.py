"""What the NLCL notebook computes, through a :class:`~derainkit.experiments.lab.Lab` (so every number is a
stored record): the official weights on real photos (background, rain layer, NIQE), unsupervised
training, and the intrinsic-dimension study of NLCL's TPAMI claim.

    shots = official_on_photos(lab, weights, photos, limit=7)      # rows + a rainy|background|rain grid
    ids = intrinsic_dimension(lab, weights, photos)                # TwoNN and Levina–Bickel, with intervals
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from derainkit.experiments.lab import Lab


def _photos(folder: str | Path, limit: int) -> list[Path]:
    from derainkit.data import discover_pairs

    pairs = discover_pairs(Path(folder), layout="unpaired")
    return [p.rainy for p in (pairs[:limit] if limit else pairs)]


def official_on_photos(lab: Lab, weights: str | Path, photos: str | Path, limit: int = 0,
                       max_side: int = 512) -> tuple[list[dict[str, Any]], list[list[tuple[str, Path]]], dict]:
    """NIQE of each photo and of NLCL's background (full size, the model's own quantisation), and the
    (downscaled) rainy | background | rain layer images. Returns (table rows, image-grid rows, record)."""
    noref = lab.on(test_data=str(photos), protocols=("niqe",), eval_limit=limit)
    rec = noref.eval_weights("nlcl", weights)
    with open(lab.store.root / rec["per_image"], newline="") as fh:
        scores = {r["id"]: r for r in csv.DictReader(fh)}
    rows, grid = [], []
    for photo in _photos(photos, limit):
        png = lab.derain_image(rec, photo, max_side, weights=weights, layers=True)
        s = scores[photo.stem]
        rows.append({"photo": photo.name, "NIQE rainy": float(s["input_niqe"]), "NIQE NLCL background": float(s["niqe"]),
                     "change": float(s["niqe"]) - float(s["input_niqe"])})
        grid.append([(f"rainy {photo.name}", lab.input_image(png)), ("NLCL background", png),
                     ("NLCL rain layer", png.parent / "rain.png")])
    return rows, grid, rec


def _layers_of_pairs(lab: Lab, limit: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Backgrounds (clean images) and rain layers (rainy − clean) of the profile's paired test set."""
    from derainkit.data import discover_pairs, load_pair, resolve_data_path

    pairs = discover_pairs(resolve_data_path(lab.profile.test_data))
    pairs = pairs[:limit] if limit else pairs
    loaded = [load_pair(p) for p in pairs]
    return [c for _, c in loaded], [r - c for r, c in loaded]


def _layers_of_photos(weights: str | Path, photos: Sequence[Path], max_side: int) -> tuple[list, list]:
    """NLCL's background and rain layer of each photo (downscaled to ``max_side``), in image units."""
    from derainkit.experiments.lab import _fit
    from derainkit.infer import load_predictor
    from derainkit.io import read_image

    spec, predictor = load_predictor("nlcl", weights, device="cpu")
    rain = predictor.model.rain_layer()
    import torch

    backs, rains = [], []
    for photo in photos:
        pixels = _fit(read_image(photo), max_side)
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            backs.append(predictor.model(x)[0].permute(1, 2, 0).numpy())
            rains.append(rain(x)[0].permute(1, 2, 0).numpy())
    return backs, rains


def intrinsic_dimension(lab: Lab, weights: str | Path | None, photos: str | Path | None, limit: int = 10,
                        patch: int = 8, anchors: int = 10, per_anchor: int = 16, window: int = 40,
                        max_side: int = 512, seed: int = 0) -> dict[str, Any]:
    """The TPAMI claim on our data: intrinsic dimension (TwoNN, Levina–Bickel, 95 % intervals) of non-local
    background vs rain patches, on the profile's paired test set (B = clean, R = rainy − clean) and, when
    ``weights`` and ``photos`` are given, on real photos (NLCL's B̂ and R̂). A stored record."""
    from derainkit.data import file_sha256
    from derainkit.metrics.intrinsic_dim import levina_bickel, nonlocal_patches, twonn, verdict

    sources = {"pairs": lab.data_digest(lab.profile.test_data, limit)[0]}
    photo_files = _photos(photos, limit) if photos and weights and Path(photos).is_dir() else []
    if photo_files:
        sources.update(photos=[file_sha256(p) for p in photo_files], weights=file_sha256(weights))
    spec = {"sources": sources, "limit": limit, "patch": patch, "anchors": anchors, "per_anchor": per_anchor,
            "window": window, "max_side": max_side, "seed": seed}

    def study(key: str, folder: Path) -> dict[str, Any]:
        sets = {"paired test set (B = clean, R = rainy − clean)": _layers_of_pairs(lab, limit)}
        if photo_files:
            sets["real photos (NLCL's B̂, R̂)"] = _layers_of_photos(weights, photo_files, max_side)
        out = {}
        for name, (backs, rains) in sets.items():
            est = {}
            for layer, images in (("background", backs), ("rain", rains)):
                pts = np.concatenate([nonlocal_patches(im, patch, anchors, per_anchor, window, seed=seed + i)
                                      for i, im in enumerate(images)])
                est[layer] = {"twonn": twonn(pts).to_dict(), "levina_bickel": levina_bickel(pts, seed=seed).to_dict()}
            out[name] = {**est, "verdict": {
                m: verdict(_estimate(est["background"][m]), _estimate(est["rain"][m])) for m in ("twonn", "levina_bickel")}}
        return {"studies": out}

    return lab.compute("intrinsic_dim", spec, study)


def _estimate(d: dict):
    from derainkit.metrics.intrinsic_dim import IDEstimate

    return IDEstimate(**d)


def id_ratio(record: dict[str, Any], method: str = "twonn") -> float:
    """ID(background) / ID(rain) of the first study in an :func:`intrinsic_dimension` record (the asymmetric
    NLCL loss sets its two temperatures from it), rounded to 2 decimals so that runs name the same config."""
    study = next(iter(record["studies"].values()))
    return round(study["background"][method]["dimension"] / study["rain"][method]["dimension"], 2)


def id_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of an :func:`intrinsic_dimension` record."""
    rows = []
    for data, study in record["studies"].items():
        for method in ("twonn", "levina_bickel"):
            b, r = study["background"][method], study["rain"][method]
            rows.append({"data": data, "estimator": method,
                         "background ID [95% CI]": f"{b['dimension']:.2f} [{b['low']:.2f}, {b['high']:.2f}]",
                         "rain ID [95% CI]": f"{r['dimension']:.2f} [{r['low']:.2f}, {r['high']:.2f}]",
                         "patches (B / R)": f"{b['points']} / {r['points']}", "verdict": study["verdict"][method]})
    return rows


def niqe_note(what: str, record: dict[str, Any]) -> str:
    """One line: NIQE of a stored no-reference record against its input's (lower is better), or why none."""
    m = (record.get("metrics") or {}).get("niqe")
    if not m:
        return f"NIQE of {what} on the photos: not measured yet (record `{record.get('key')}`)."
    change = "lower (better)" if m["niqe"] < m["input_niqe"] else "not lower"
    return (f"NIQE of {what} on the {record.get('n_images', '?')} photos: {m['niqe']:.3f} against the input's "
            f"{m['input_niqe']:.3f}, {change}; record `{record['key']}`.")
