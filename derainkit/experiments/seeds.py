"""One ablation row trained under several seeds: its mean ± standard deviation, and a verdict on the paper's claim.

    agg = replicate([rec_seed66, rec_seed67, rec_seed68])   # what Lab.train_eval_seeds returns
    agg["metrics"]["msgnn-rgb"]["psnr"], agg["metrics"]["msgnn-rgb"]["psnr_std"]
    d = difference(agg, reference_agg, "msgnn-rgb")            # ours: row minus the full model
    verdict(paper_diff=-0.126, ours=d)                         # "reproduced" / "not resolved ..." / "contradicted"

The verdict rule (README, "Seeds and verdicts"): an ablation row's PSNR difference to the table's full-model
row is compared with the paper's difference for the same two rows. With ``se`` the standard error of our mean
difference (Welch: ``sqrt(s_row²/n_row + s_ref²/n_ref)``, sample standard deviations), our difference is
*resolved* when ``|ours| > 2·se``. Resolved and of the paper's sign: **reproduced**; resolved and of the
opposite sign: **contradicted**; otherwise **not resolved at this budget** (which includes fewer than two seeds
on either side, where no spread can be estimated). Rows the paper gives no number for, or for which it reports
no difference, get no verdict. The seeds are not paired: different architectures draw their initial weights
differently from one seed, so only the data order would be shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from derainkit.errors import DerainkitError

REPRODUCED = "reproduced"
NOT_RESOLVED = "not resolved at this budget"
CONTRADICTED = "contradicted"
REFERENCE = "reference (full model)"
NO_PAPER_DIFFERENCE = "no paper difference to test"
VERDICTS = (REPRODUCED, NOT_RESOLVED, CONTRADICTED)
SE_FACTOR = 2.0  # our difference must exceed this many standard errors to count as resolved

_METRICS = ("psnr", "ssim", "input_psnr", "input_ssim", "niqe", "input_niqe")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    if not values:
        raise DerainkitError("mean_std of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def is_replicate(record: Mapping[str, Any] | None) -> bool:
    return bool(record) and record.get("kind") == "seeds"


def seed_records(record: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The single-seed records behind a row: its seeds' records, or the record itself."""
    if not record:
        return []
    return list(record["records"]) if is_replicate(record) else [record]


def seed_of(record: Mapping[str, Any]) -> int | None:
    return ((record.get("spec") or {}).get("run") or {}).get("seed")


def replicate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the records of its seeds (same run but for the seed): the metrics' means, with
    ``<metric>_std`` and ``n`` beside them; tables and figures read it like a single record. While any seed
    is a placeholder (a plan or fill walk), so is the row."""
    if not records:
        raise DerainkitError("a replicated row needs at least one record")
    first = records[0]
    out: dict[str, Any] = {"kind": "seeds", "records": list(records), "seeds": [seed_of(r) for r in records],
                           "key": "+".join(r["key"] for r in records)}
    if any(r.get("planned") for r in records):
        return {**out, "planned": True, "metrics": {}, "provenance": {}}
    metrics: dict[str, dict[str, Any]] = {}
    for proto in first.get("metrics", {}):
        per = [r["metrics"].get(proto) or {} for r in records]
        cell: dict[str, Any] = {"n": len(records)}
        for name in _METRICS:
            vals = [m[name] for m in per if m.get(name) is not None]
            if len(vals) == len(records):
                cell[name], cell[f"{name}_std"] = mean_std(vals)
        metrics[proto] = cell
    out.update(metrics=metrics, provenance=dict(first.get("provenance", {})))
    for name in ("n_images", "parameters", "run", "run_config", "test_data", "eval_limit"):
        if name in first:
            out[name] = first[name]
    commits = sorted({r.get("provenance", {}).get("commit", "?") for r in records})
    devices = sorted({r.get("provenance", {}).get("device", "?") for r in records})
    out["provenance"].update(commit=", ".join(commits), device=", ".join(devices))
    out["wall_seconds"] = round(math.fsum(float(r.get("wall_seconds") or 0) for r in records), 3)
    return out


@dataclass(frozen=True)
class Difference:
    """Our PSNR difference row − reference (dB): mean, its standard error (None below two seeds a side)."""

    mean: float
    se: float | None
    n_row: int
    n_ref: int

    @property
    def resolved(self) -> bool:
        return self.se is not None and abs(self.mean) > SE_FACTOR * self.se

    def text(self) -> str:
        if self.se is None:
            return f"{self.mean:+.3f} (n = {self.n_row}/{self.n_ref}: no spread)"
        return f"{self.mean:+.3f} ± {SE_FACTOR * self.se:.3f}"


def seed_psnrs(record: Mapping[str, Any] | None, protocol: str) -> list[float]:
    """Each seed's PSNR under ``protocol`` (the measured ones) of a row or a single record."""
    return [r["metrics"][protocol]["psnr"] for r in seed_records(record)
            if (r.get("metrics") or {}).get(protocol, {}).get("psnr") is not None]


def difference(row: Mapping[str, Any] | None, reference: Mapping[str, Any] | None,
               protocol: str) -> Difference | None:
    """Ours: the row's mean PSNR minus the reference row's, with the Welch standard error (None when either
    side has no measurement)."""
    a, b = seed_psnrs(row, protocol), seed_psnrs(reference, protocol)
    if not a or not b:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    se = None if sa is None or sb is None else math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    return Difference(ma - mb, se, len(a), len(b))


def verdict(paper_diff: float | None, ours: Difference | None) -> str:
    """The rule in this module's docstring (and the README)."""
    if paper_diff is None or paper_diff == 0:
        return NO_PAPER_DIFFERENCE
    if ours is None or not ours.resolved:
        return NOT_RESOLVED
    return REPRODUCED if (ours.mean > 0) == (paper_diff > 0) else CONTRADICTED
