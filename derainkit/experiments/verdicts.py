"""Every ablation's verdict in one table, read from the rendered tables of a profile, with what the store cost.

    python -m derainkit.experiments.verdicts --profile cpu      # -> results/cpu/verdicts.{md,csv}
    make verdicts PROFILE=cpu

Each ablation notebook writes ``results/<profile>/<item>.csv`` with a mean line per row (``n_seeds``, the
difference to the item's reference row, its standard error and the verdict of ``derainkit.experiments.seeds``).
This module collects those lines, in the paper's order, so a reader sees every item's verdict at once; an
item whose table has not been rendered yet is listed as such, and rows that were not run keep their reason.
It computes nothing new: the numbers are the tables' own. The cost line sums the ``wall_seconds`` of the
profile's records (training and scoring, on the machines that ran them).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from derainkit.experiments import seeds as sd
from derainkit.experiments.tables import REREAD_PLACES

# (item, rendered file stem, what it ablates) in the paper's order, then the studies beyond the paper
ITEMS: tuple[tuple[str, str, str], ...] = (
    ("table2", "table2", "components (graph, fusion, attention)"),
    ("table3", "table3", "stride s at two crop sizes"),
    ("table4", "table4", "patch size l"),
    ("table5", "table5", "neighbours k"),
    ("fig7", "fig7", "number of sub-networks N"),
    ("fig8", "fig8", "internal scales"),
    ("fig9", "fig9", "exemplar branch"),
    ("code-vs-paper", "code_vs_paper", "official code vs paper description"),
    ("exemplar-policies", "exemplar_policies", "exemplar pairing policy"),
)
FIELDS = ["item", "setting", "reference", "n_seeds", "psnr", "psnr_std", "paper_diff", "our_diff", "our_diff_2se",
          "verdict", "records"]


def _f(value: str, digits: int, signed: bool = False) -> str:
    if value in ("", None):
        return "–"
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def collect(profile_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one line per non-reference row of every rendered ablation table, the items not rendered yet)."""
    lines: list[dict[str, Any]] = []
    missing: list[str] = []
    for item, stem, _what in ITEMS:
        path = profile_dir / f"{stem}.csv"
        if not path.is_file():
            missing.append(item)
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        # verdicts are judged under one protocol (the first the profile lists); the CSV also has the others
        judged = next((r.get("protocol") for r in rows if r.get("verdict")), None)
        for r in rows:
            if judged is not None and r.get("protocol") != judged:
                continue
            source = r.get("source", "")
            measured_mean = source.startswith("measured here") and not r.get("seed")
            if not (measured_mean or source.startswith("not run")):
                continue  # per-seed lines and quoted paper lines
            if r.get("verdict") == sd.REFERENCE:
                continue
            not_run = source.startswith("not run")
            se = r.get("our_diff_se", "")
            lines.append({
                "item": item, "setting": r["setting"], "reference": r.get("reference", ""),
                "n_seeds": "" if not_run else r.get("n_seeds", "1") or "1", "psnr": "" if not_run else r["psnr"],
                "psnr_std": r.get("psnr_std", ""), "paper_diff": r.get("paper_diff", ""),
                "our_diff": r.get("our_diff", ""), "our_diff_2se": f"{sd.SE_FACTOR * float(se):.{REREAD_PLACES}f}" if se else "",
                "verdict": source if not_run else (r.get("verdict") or ""), "records": r.get("record", "")})
    return lines, missing


def store_cost(profile_dir: Path) -> tuple[int, float]:
    """(records in the profile's store, their summed wall seconds)."""
    n, seconds = 0, 0.0
    for path in sorted((profile_dir / "runs").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        n += 1
        seconds += float(rec.get("wall_seconds") or 0.0)
    return n, seconds


def render(profile: str, profile_dir: Path) -> str:
    lines, missing = collect(profile_dir)
    counts = {v: sum(1 for x in lines if x["verdict"] == v) for v in (*sd.VERDICTS, sd.NO_PAPER_DIFFERENCE)}
    n_rec, secs = store_cost(profile_dir)
    out = [f"# Verdicts, profile `{profile}`", "",
           "Every ablation row against its item's reference row, from the rendered tables in this folder "
           "(`msgnn-rgb` PSNR, mean ± sd over seeds; Δ ours ± 2 SE, Welch). Rule: README, \"Seeds and verdicts\".", "",
           "| item | setting | vs | seeds | ours (dB) | Δ paper | Δ ours ± 2 SE | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for x in lines:
        ours = "–" if not x["psnr"] else _f(x["psnr"], 3) + (f" ± {_f(x['psnr_std'], 3)}" if x["psnr_std"] else "")
        diff = "–" if not x["our_diff"] else _f(x["our_diff"], 3, True) + (
            f" ± {_f(x['our_diff_2se'], 3)}" if x["our_diff_2se"] else "")
        out.append(f"| {x['item']} | {x['setting']} | {x['reference'] or '–'} | {x['n_seeds'] or '–'} | {ours} | "
                   f"{_f(x['paper_diff'], 3, True)} | {diff} | {x['verdict']} |")
    out += ["", "Counts: " + ", ".join(f"{v}: {c}" for v, c in counts.items()) + "."]
    if missing:
        out.append(f"Not rendered yet at this profile: {', '.join(missing)} (`make plan PROFILE={profile}` lists "
                   "the records they still need).")
    out.append(f"Store: {n_rec} records, {secs / 3600:.1f} h of summed wall time (training and scoring, every item "
               "of the profile, Table 1, NLCL and UniRain included; a record shared by items counts once).")
    return "\n".join(out) + "\n"


def write(profile: str, results_dir: Path) -> tuple[Path, Path]:
    from derainkit.fsutil import atomic_write_text

    profile_dir = results_dir / profile
    md = profile_dir / "verdicts.md"
    atomic_write_text(md, render(profile, profile_dir))
    lines, _missing = collect(profile_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    path = profile_dir / "verdicts.csv"
    atomic_write_text(path, buf.getvalue())
    return md, path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results", type=Path, default=Path(os.environ.get("DERAINKIT_RESULTS") or "results"),
                    help="results root (default: $DERAINKIT_RESULTS, else results/), as the notebooks use it")
    args = ap.parse_args(argv)
    if not (args.results / args.profile).is_dir():
        print(f"{args.results / args.profile}: no results for profile {args.profile!r}; run its notebooks first "
              f"(make reproduce-tables PROFILE={args.profile})")
        return 2
    md, _ = write(args.profile, args.results)
    print(md.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
