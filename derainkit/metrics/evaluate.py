"""Score a model (or a folder of already derained images) on a paired dataset.

Writes, into an output folder:
- ``per_image.csv``: one row per pair, PSNR/SSIM of the prediction and of the rainy input itself
  under every requested protocol (columns ``<protocol>/psnr`` ...);
- ``summary.json`` and ``summary.md``: dataset means, the protocols' definitions, how float
  outputs were quantised, the tiling used, the data manifest digest, the model, its weights'
  sha256, and provenance (commit, device, library versions, wall time);
- ``manifest.csv``: exactly which files were scored (with their sha256).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from derainkit.data import Pair, load_pair
from derainkit.data.manifest import manifest_text
from derainkit.errors import DatasetError, naming_file
from derainkit.fsutil import atomic_write_bytes, check_target, refuse_overwriting
from derainkit.io import write_image
from derainkit.metrics.protocols import PROTOCOLS, Quantize, get_protocol, quantize_uint8, score
from derainkit.provenance import provenance

PredictFn = Callable[[np.ndarray, Pair], tuple[np.ndarray, dict]]
NIQE = "niqe"  # the no-reference measure (derainkit.metrics.niqe): needs no ground truth


@dataclass
class EvaluationResult:
    out_dir: Path
    n_images: int
    means: dict[str, dict[str, float]]  # protocol -> {"psnr", "ssim", "input_psnr", "input_ssim"}
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown: one row per protocol, and a NIQE table (lower is better) when it was scored."""
        sections = []
        paired = {p: m for p, m in self.means.items() if p != NIQE}
        if paired:
            rows = [f"| {p} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['input_psnr']:.2f} | {m['input_ssim']:.4f} |"
                    for p, m in paired.items()]
            sections.append("\n".join(["| protocol | PSNR (dB) | SSIM | input PSNR | input SSIM |",
                                       "|---|---|---|---|---|", *rows]))
        if NIQE in self.means:
            m = self.means[NIQE]
            sections.append("\n".join(["| no-reference | NIQE (lower is better) | input NIQE |", "|---|---|---|",
                                       f"| niqe | {m['niqe']:.3f} | {m['input_niqe']:.3f} |"]))
        return "\n\n".join(sections)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score_image(pred: np.ndarray, rainy: np.ndarray, clean: np.ndarray, protocols: Sequence[str],
                quantize: Quantize, name: str | Path = "image") -> dict[str, float]:
    """``<protocol>/psnr``, ``/ssim``, ``/input_psnr``, ``/input_ssim`` of one image: the one scoring path
    of ``evaluate``, the Lab and training-time validation (so their figures agree). Float predictions
    are quantised by ``quantize`` (the model's official rule) for uint8 protocols; the rainy input,
    read from a file, by rounding."""
    row: dict[str, float] = {}
    for proto in protocols:
        try:
            s = score(pred, clean, proto, quantize=quantize)
            s_in = score(rainy, clean, proto, quantize="round")
        except ValueError as exc:  # e.g. an image smaller than the SSIM window
            raise DatasetError(f"{name}: cannot be scored under {proto}: {exc}") from None
        row.update({f"{proto}/psnr": s.psnr, f"{proto}/ssim": s.ssim,
                    f"{proto}/input_psnr": s_in.psnr, f"{proto}/input_ssim": s_in.ssim})
    return row


NIQE_DESCRIPTION = ("NIQE (Mittal et al. 2013, the LIVE MATLAB release's pristine model and features; lower is more "
                    "natural), of the prediction quantised like the uint8 protocols and of the input; no ground truth")


def niqe_image(pred: np.ndarray, rainy: np.ndarray, quantize: Quantize, name: str | Path = "image") -> dict[str, float]:
    """``niqe`` of the prediction (quantised by ``quantize``, as a saved result would be) and ``input_niqe``."""
    from derainkit.errors import DerainkitError
    from derainkit.metrics.niqe import niqe

    try:
        return {"niqe": niqe(quantize_uint8(pred, quantize)), "input_niqe": niqe(quantize_uint8(rainy, "round"))}
    except DerainkitError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def mean_scores(rows: Sequence[dict[str, Any]], protocols: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per protocol, the means of ``score_image`` rows (non-finite PSNRs of exact images left out)."""
    return {proto: {key: _mean([r[f"{proto}/{key}"] for r in rows])
                    for key in ("psnr", "ssim", "input_psnr", "input_ssim")} for proto in protocols}


def evaluate(pairs: Sequence[Pair], predict: PredictFn | None, out_dir: str | Path,
             protocols: Iterable[str] = ("matlab-y",), quantize: Quantize = "round",
             save_dir: str | Path | None = None, data_root: str | Path | None = None,
             meta: dict[str, Any] | None = None, device: str = "cpu", progress: bool = True) -> EvaluationResult:
    """Score ``predict(rainy, pair) -> (derained, info)`` on ``pairs``.

    ``predict=None`` scores the rainy images themselves (useful for a dataset's input PSNR, or
    with ``Pair.rainy`` pointing at released results of a method). ``quantize`` is how float
    predictions become uint8 for the protocols that score uint8 images. ``save_dir`` keeps the
    predictions as 8-bit PNGs named by pair id (rounded, as the kit writes images).
    """
    protocols = list(dict.fromkeys(protocols))
    with_niqe = NIQE in protocols
    protocols = [p for p in protocols if p != NIQE]
    for p in protocols:
        get_protocol(p)
    if not pairs:
        raise DatasetError(f"no image pairs to evaluate{f' in {data_root}' if data_root else ''}")
    missing_gt = [p.id for p in pairs if p.clean is None]
    if missing_gt and protocols:
        raise DatasetError(f"{len(missing_gt)} image(s) have no ground truth, cannot score {protocols}: "
                           f"{missing_gt[:10]} (photos without ground truth: --protocol niqe)")
    if not protocols and not with_niqe:
        raise DatasetError("no protocol to score: give a full-reference protocol or niqe")
    out_dir = Path(out_dir)
    outputs = [(out_dir / name, out_dir) for name in ("per_image.csv", "manifest.csv", "summary.json", "summary.md")]
    if save_dir is not None:
        outputs += [(Path(save_dir) / f"{p.id}.png", p.rainy) for p in pairs]
    refuse_overwriting(outputs, [f for p in pairs for f in {p.rainy, p.clean} if f is not None])
    for path, _source in outputs:
        check_target(path)  # a link among the outputs fails now, not after the whole evaluation
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    infos: list[dict] = []
    for pair in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        rainy, clean = load_pair(pair)
        if predict is None:
            pred, info = rainy, {}
        else:
            # errors from the model (e.g. an image too small for it) name the image they concern
            pred, info = naming_file(pair.rainy, lambda: predict(rainy, pair))
        infos.append(info)
        if clean is not None and pred.shape != clean.shape:
            raise DatasetError(f"{pair.rainy}: prediction is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                               f"{pair.clean} is {clean.shape[1]}x{clean.shape[0]}")
        row: dict[str, Any] = {"id": pair.id, "height": rainy.shape[0], "width": rainy.shape[1]}
        if protocols:
            row.update(score_image(pred, rainy, clean, protocols, quantize, pair.rainy))
        if with_niqe:
            row.update(niqe_image(pred, rainy, quantize, pair.rainy))
        if info.get("tiling") is not None:
            row["tile"] = info["tiling"].get("tile")
        rows.append(row)
        if save_dir is not None:
            write_image(Path(save_dir) / f"{pair.id}.png", pred)
    wall = time.perf_counter() - t0

    # Every output is prepared in memory first and written at the very end, each atomically, in one quick
    # burst: a run killed at any moment before leaves the previous results untouched. summary.json, written
    # last, holds the digests of the others, so a reader can tell a complete set from a mix.
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    per_image = buf.getvalue().encode("utf-8")
    manifest = manifest_text(list(pairs)).encode("utf-8")
    digest = hashlib.sha256(manifest).hexdigest()
    means = mean_scores(rows, protocols)
    if with_niqe:
        means[NIQE] = {key: _mean([r[key] for r in rows]) for key in ("niqe", "input_niqe")}
    # how many images ran whole or with each tile setting (the reasons live in per_image.csv's tile column)
    tiling_counts: dict[str, int] = {}
    for info in infos:
        t = info.get("tiling")
        if t:
            key = "whole image" if t["tile"] is None else f"tile {t['tile']} overlap {t['overlap']} blend {t['blend']}"
            tiling_counts[key] = tiling_counts.get(key, 0) + 1
    summary = {
        "n_images": len(rows),
        "metrics": means,
        "protocols": {**{p: PROTOCOLS[p].description for p in protocols},
                      **({NIQE: NIQE_DESCRIPTION} if with_niqe else {})},
        "quantize": quantize,
        "data_root": str(data_root) if data_root is not None else None,
        "manifest_sha256": digest,
        "per_image_sha256": hashlib.sha256(per_image).hexdigest(),
        "tiling": tiling_counts,
        "wall_seconds": round(wall, 2),
        **(meta or {}),
        "provenance": provenance(device),
    }
    result = EvaluationResult(out_dir, len(rows), means, summary)
    md = [f"# Evaluation: {summary.get('model', 'input images')} on {data_root or 'pairs'}", "",
          f"{len(rows)} images; float outputs quantised by `{quantize}` for uint8 protocols; "
          f"commit `{summary['provenance']['commit']}`, device {summary['provenance']['device']}.", "",
          result.table(), "", "Protocols:"]
    md += [f"- `{p}`: {d}" for p, d in summary["protocols"].items()]
    files = {"per_image.csv": per_image, "manifest.csv": manifest, "summary.md": ("\n".join(md) + "\n").encode(),
             "summary.json": (json.dumps(summary, indent=2, default=str) + "\n").encode()}
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return result
