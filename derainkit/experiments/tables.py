"""Render stored records beside the paper's quoted values: ``<item>.csv``, ``<item>.md`` and PNG figures.

A rendered table is a pure function of the records and the quoted values (no clocks, no machine
state), so re-rendering unchanged records writes byte-identical files. Every number is labelled:
ours are "measured here" with their protocol, data set, image count and schedule; the paper's are
"quoted" with their table, data set and protocol. Rows we could not run say why. A row trained under
several seeds (:mod:`derainkit.experiments.seeds`) shows mean ± standard deviation, keeps each seed's value
in the CSV, and, given the table's full-model ``reference`` row, the verdict on the paper's difference.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from derainkit.errors import DerainkitError
from derainkit.experiments import seeds as sd
from derainkit.experiments.paper_values import PAPER_PROTOCOL, Quoted
from derainkit.experiments.store import writes_outputs
from derainkit.fsutil import atomic_path, atomic_write_text


@dataclass
class Row:
    """One line of a table: our record (None when not run, with ``why_not_run``) and the paper's values."""

    setting: str
    record: Mapping[str, Any] | None
    quoted: Mapping[str, Quoted] = field(default_factory=dict)  # paper data set -> value
    why_not_run: str = ""
    x: Any = None  # the swept value (k, l, N, ...) for plots
    extra: Mapping[str, str] = field(default_factory=dict)  # more columns (e.g. costs.cost_cells), shown before notes


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _pair(psnr: float | None, ssim: float | None) -> str:
    if psnr is None and ssim is None:
        return "–"
    return f"{_fmt(psnr, 3) or '–'} / {_fmt(ssim, 4) or '–'}"


def _cell(m: Mapping[str, Any]) -> str:
    """PSNR / SSIM of our row; over several seeds, mean ± standard deviation of each."""
    if m.get("n", 1) < 2 or m.get("psnr_std") is None:
        return _pair(m.get("psnr"), m.get("ssim"))
    return f"{m['psnr']:.3f} ± {m['psnr_std']:.3f} / {m['ssim']:.4f} ± {m['ssim_std']:.4f}"


References = Union[str, Mapping[str, str], None]  # a table's full-model row: its setting, or one per row


def verdict_protocol(protocols: Sequence[str]) -> str:
    """The protocol verdicts use: the paper's (msgnn-rgb) when measured, else the first."""
    return "msgnn-rgb" if "msgnn-rgb" in protocols else protocols[0]


def _paper_psnr(row: Row) -> tuple[str, float] | None:
    return next(((d, q.psnr) for d, q in row.quoted.items() if q.psnr is not None), None)


@dataclass(frozen=True)
class Comparison:
    """A row against its table's full-model row: the paper's PSNR difference, ours, and the verdict."""

    reference: str
    paper_diff: float | None
    ours: Mapping[str, sd.Difference | None]  # protocol -> our difference
    verdict: str


def comparisons(rows: Sequence[Row], reference: References, protocols: Sequence[str]) -> dict[str, Comparison]:
    """Setting -> :class:`Comparison` for every row that has a reference row (``reference``: the setting of
    the table's full-model row, or a mapping from each row's setting to its own reference's setting)."""
    if not reference:
        return {}
    by_setting = {r.setting: r for r in rows}
    refs = {r.setting: reference for r in rows} if isinstance(reference, str) else dict(reference)
    unknown = sorted({v for v in refs.values() if v not in by_setting})
    if unknown:
        raise DerainkitError(f"reference row(s) {unknown} are not settings of this table")
    out: dict[str, Comparison] = {}
    vproto = verdict_protocol(protocols)
    for row in rows:
        ref_setting = refs.get(row.setting)
        if ref_setting is None:
            continue
        if ref_setting == row.setting:
            out[row.setting] = Comparison(ref_setting, None, {}, sd.REFERENCE)
            continue
        ref = by_setting[ref_setting]
        mine = _paper_psnr(row)
        theirs = ref.quoted.get(mine[0]) if mine else None  # the paper's reference row, same data set
        paper_diff = round(mine[1] - theirs.psnr, 3) if mine and theirs and theirs.psnr is not None else None
        ours = {p: sd.difference(row.record, ref.record, p) for p in protocols}
        out[row.setting] = Comparison(ref_setting, paper_diff, ours, sd.verdict(paper_diff, ours.get(vproto)))
    return out


def _ours(item: str, row: Row, rec: Mapping[str, Any] | None, proto: str, test_data: str,
          source: str) -> dict[str, Any]:
    m = (rec or {}).get("metrics", {}).get(proto) if rec else None
    prov = (rec or {}).get("provenance", {})
    run = (rec or {}).get("run", {})
    rounded = lambda name, digits: round(m[name], digits) if m and m.get(name) is not None else ""  # noqa: E731
    return {
        "item": item, "setting": row.setting, "x": "" if row.x is None else row.x,
        "source": source if m else f"not run: {row.why_not_run or 'no record'}",
        "dataset": test_data, "protocol": proto, "images": (rec or {}).get("n_images", ""),
        "seed": sd.seed_of(rec) if rec and not sd.is_replicate(rec) else "",
        "n_seeds": m.get("n", 1) if m else "",
        "psnr": rounded("psnr", REREAD_PLACES), "psnr_std": rounded("psnr_std", REREAD_PLACES),
        "ssim": rounded("ssim", 5), "ssim_std": rounded("ssim_std", 5),
        "input_psnr": rounded("input_psnr", 4),
        "iterations": run.get("iterations", (rec or {}).get("run_config", {}).get("iterations", "")),
        "parameters": (rec or {}).get("parameters", ""),
        "record": (rec or {}).get("key", ""), "commit": prov.get("commit", ""),
        "device": prov.get("device", ""), "note": "",
    }


def table_rows(item: str, rows: Sequence[Row], protocols: Sequence[str], test_data: str,
               reference: References = None) -> list[dict[str, Any]]:
    """The CSV rows: per (setting, protocol) ours (over several seeds: the mean, then each seed's value)
    and one per paper data set, each labelled; with a ``reference``, the differences and the verdict."""
    return _table_rows(item, rows, protocols, test_data, comparisons(rows, reference, protocols))


def _table_rows(item: str, rows: Sequence[Row], protocols: Sequence[str], test_data: str,
                comps: Mapping[str, Comparison]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    vproto = verdict_protocol(protocols)
    for row in rows:
        rec = row.record
        comp = comps.get(row.setting)
        for proto in protocols:
            line = _ours(item, row, rec, proto, test_data,
                         "measured here" if not sd.is_replicate(rec) else "measured here (mean over seeds)")
            if comp is not None:
                d = comp.ours.get(proto)
                line.update(reference=comp.reference,
                            paper_diff="" if comp.paper_diff is None else comp.paper_diff,
                            our_diff="" if d is None else round(d.mean, REREAD_PLACES),
                            our_diff_se="" if d is None or d.se is None else round(d.se, REREAD_PLACES),
                            verdict=comp.verdict if proto == vproto else "")
            line.update(row.extra)
            out.append(line)
            if sd.is_replicate(rec) and len(rec["records"]) > 1:
                out += [_ours(item, row, r, proto, test_data, f"measured here (seed {sd.seed_of(r)})")
                        for r in rec["records"]]
        for dataset, q in row.quoted.items():
            out.append({
                "item": item, "setting": row.setting, "x": "" if row.x is None else row.x,
                "source": f"quoted: {q.source}" if q.source else "quoted: -", "dataset": dataset,
                "protocol": q.protocol if q.psnr is not None else "", "images": "",
                "psnr": "" if q.psnr is None else q.psnr, "ssim": "" if q.ssim is None else q.ssim,
                "input_psnr": "", "iterations": "", "parameters": "", "record": "", "commit": "", "device": "",
                "note": q.note,
            })
    return out


# Decimal places of the CSV's PSNR means/sds and differences. verdicts.py re-reads them and prints 3 places:
# with 4 here a value was rounded twice and could print 0.001 off the table's own figure.
REREAD_PLACES = 6

_CSV_FIELDS = ["item", "setting", "x", "source", "dataset", "protocol", "images", "seed", "n_seeds", "psnr",
               "psnr_std", "ssim", "ssim_std", "input_psnr", "iterations", "parameters", "record", "commit", "device",
               "note"]
_VERDICT_FIELDS = ["reference", "paper_diff", "our_diff", "our_diff_se", "verdict"]


def render_table(out_dir: str | Path, item: str, title: str, rows: Sequence[Row], *, profile: str,
                 protocols: Sequence[str], test_data: str, caveat: str = "", reference: References = None,
                 footnotes: Sequence[str] = ()) -> Path:
    """Write ``<out_dir>/<item>.csv`` and ``<item>.md``; returns the Markdown path. ``reference``: the
    full-model row's setting (or a mapping setting -> its reference's setting) that the verdicts compare
    each row with; ``footnotes``: lines printed under the table (e.g. where extra columns come from)."""
    out_dir = _output_dir(out_dir)
    comps = comparisons(rows, reference, protocols)
    vproto = verdict_protocol(protocols)
    flat = _table_rows(item, rows, protocols, test_data, comps)
    extras = list(dict.fromkeys(k for r in rows for k in r.extra))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS + (_VERDICT_FIELDS if comps else []) + extras, restval="",
                       lineterminator="\n")
    w.writeheader()
    w.writerows(flat)
    atomic_write_text(out_dir / f"{item}.csv", buf.getvalue())

    datasets = list(dict.fromkeys(d for r in rows for d in r.quoted))
    protos = list(dict.fromkeys(f"{q.protocol} ({q.source})" for r in rows for q in r.quoted.values()
                                if q.psnr is not None)) or [PAPER_PROTOCOL]
    recs = [r.record for r in rows if r.record]
    commits = sorted({r["provenance"].get("commit", "?") for r in recs if "provenance" in r})
    devices = sorted({r["provenance"].get("device", "?") for r in recs if "provenance" in r})
    images = sorted({str(r.get("n_images")) for r in recs if r.get("n_images")})
    seed_lists = sorted({tuple(r["seeds"]) for r in recs if sd.is_replicate(r)})
    seeds_text = ("; seeds " + " | ".join(", ".join(str(s) for s in x) for x in seed_lists) +
                  (" (cells: mean ± standard deviation over seeds)" if any(len(x) > 1 for x in seed_lists) else "")
                  if seed_lists else "")
    lines = [f"# {title}", "",
             f"- **Ours** (measured here, profile `{profile}`): test set `{test_data}`"
             f" ({', '.join(images) or '?'} images), protocols {', '.join(f'`{p}`' for p in protocols)};"
             f" commit {', '.join(commits) or '-'}; device {', '.join(devices) or '-'}{seeds_text}.",
             f"- **Paper** (quoted, not measured here): {', '.join(protos)}; data set(s) {', '.join(datasets) or '-'}."]
    if caveat:
        lines.append(f"- {caveat}")
    if comps:
        lines.append(f"- **Verdicts** (README, \"Seeds and verdicts\"): each row's `{vproto}` PSNR difference to its "
                     f"reference row against the paper's; resolved when beyond {sd.SE_FACTOR:g} standard errors "
                     "(Welch, seeds unpaired); the Δ ours column shows mean ± 2 SE.")
    lines += ["", "Cells are PSNR (dB) / SSIM.", ""]
    head = (["setting"] + [f"ours {p}" for p in protocols] + [f"paper {d}" for d in datasets]
            + (["Δ paper (dB)", f"Δ ours (dB, {vproto})", "verdict"] if comps else []) + extras + ["notes"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for row in rows:
        cells = [row.setting]
        for p in protocols:
            m = (row.record or {}).get("metrics", {}).get(p)
            cells.append(_cell(m) if m else f"not run ({row.why_not_run or 'no record'})")
        notes = []
        for d in datasets:
            q = row.quoted.get(d)
            cells.append(_pair(q.psnr, q.ssim) if q else "–")
            if q and q.note and q.note not in row.setting:
                notes.append(q.note)
        if comps:
            comp = comps.get(row.setting)
            d = comp.ours.get(vproto) if comp else None
            cells += ["–" if comp is None or comp.paper_diff is None else f"{comp.paper_diff:+.3f}",
                      "–" if d is None else d.text(), "–" if comp is None else comp.verdict]
        cells += [row.extra.get(k, "–") for k in extras]
        if row.record and row.record.get("parameters"):
            notes.append(f"{row.record['parameters']:,} parameters (ours)")
        cells.append("; ".join(dict.fromkeys(notes)))
        lines.append("| " + " | ".join(cells) + " |")
    inputs = [r.record for r in rows if r.record and r.record.get("metrics")]
    if inputs:
        first = next(iter(inputs[0]["metrics"].values()))
        if "input_psnr" in first:
            lines += ["", "Input (rainy images, ours): " + ", ".join(
                f"`{p}` {_pair(inputs[0]['metrics'][p]['input_psnr'], inputs[0]['metrics'][p]['input_ssim'])}"
                for p in protocols if p in inputs[0]["metrics"])]
    if footnotes:
        lines += [""] + list(footnotes)
    md = out_dir / f"{item}.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md


def describe(rows: Sequence[Row]) -> str:
    """The stable part of a table (settings, what was run, quoted values): what nbval checks."""
    lines = []
    for r in rows:
        status = "measured" if r.record and r.record.get("metrics") else f"not run ({r.why_not_run or 'no record'})"
        quoted = ", ".join(f"{d}: {_pair(q.psnr, q.ssim)}" for d, q in r.quoted.items()) or "-"
        lines.append(f"{r.setting} | ours: {status} | paper: {quoted}")
    return "\n".join(lines)


def _std(row: Row, protocol: str) -> float:
    return ((row.record or {}).get("metrics", {}).get(protocol) or {}).get("psnr_std") or 0.0


def plot_table(out_png: str | Path, title: str, rows: Sequence[Row], protocol: str, xlabel: str = "") -> Path:
    """Our PSNR per setting (measured; over seeds: the mean with ± one standard deviation and each seed's
    point, the mean written above the bar) and, in a second panel, the paper's (quoted), never on one axis,
    since they come from different data sets and schedules. An item the paper gives no number for (a
    qualitative figure, an extra study) gets the measured panel alone."""
    plt = _pyplot()

    labels = [r.setting for r in rows]
    ours = [((r.record or {}).get("metrics", {}).get(protocol) or {}).get("psnr") for r in rows]
    datasets = list(dict.fromkeys(d for r in rows for d in r.quoted))
    paper = [next((q.psnr for q in r.quoted.values() if q.psnr is not None), None) for r in rows]
    panels = [(ours, f"ours (measured, {protocol})", "tab:blue")]
    if any(v is not None for v in paper):
        panels.append((paper, f"paper (quoted, {', '.join(datasets) or '-'})", "tab:gray"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (vals, name, colour) in zip(axes[0], panels):
        xs = list(range(len(labels)))
        got = [(x, v) for x, v in zip(xs, vals) if v is not None]
        if got:
            spread = {x: _std(rows[x], protocol) if vals is ours else 0.0 for x, _ in got}
            ax.bar([x for x, _ in got], [v for _, v in got], color=colour,
                   yerr=[spread[x] for x, _ in got] if any(spread.values()) else None, capsize=3)
            points = [(x, p) for x, _ in got if vals is ours for p in sd.seed_psnrs(rows[x].record, protocol)]
            if len(points) > len(got):
                ax.plot([x for x, _ in points], [p for _, p in points], "k.", ms=4, label="seeds")
            ys = [v for _, v in got] + [p for _, p in points] + [v + spread[x] for x, v in got]
            lo, hi = min(ys), max(ys)
            pad = max(0.05, (hi - lo) * 0.5)
            ax.set_ylim(lo - pad, hi + pad)
            for x, v in got:  # the mean only: each seed's value is in the CSV
                ax.text(x, max([v + spread[x]] + [p for px, p in points if px == x]), f"{v:.2f}",
                        ha="center", va="bottom", fontsize=8)
        for x, v in zip(xs, vals):
            if v is None:
                ax.text(x, ax.get_ylim()[0], "n/a", ha="center", va="bottom", fontsize=8, color="tab:red")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(name if len(panels) > 1 else f"{name}\n(the paper gives no number for this item)", fontsize=9)
        ax.set_ylabel("PSNR (dB)")
        if xlabel:
            ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_sweep(out_png: str | Path, title: str, rows: Sequence[Row], protocol: str, xlabel: str,
               paper_params_m: Mapping[Any, float] | None = None) -> Path:
    """PSNR and parameter count against a swept value (Figure 7: number of sub-networks N)."""
    plt = _pyplot()

    measured = [r for r in rows if r.record and protocol in r.record.get("metrics", {})]
    pts = [(r.x, r.record["metrics"][protocol]["psnr"], r.record.get("parameters")) for r in measured]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if pts:
        spread = [_std(r, protocol) for r in measured]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=spread if any(spread) else None, fmt="o-",
                    color="tab:blue", capsize=3, label=f"ours PSNR ({protocol})")
        seeds = [(r.x, v) for r in measured for v in sd.seed_psnrs(r.record, protocol)]
        if len(seeds) > len(pts):
            ax.plot([x for x, _ in seeds], [v for _, v in seeds], "k.", ms=4, label="ours, each seed")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR (dB), ours")
    ax2 = ax.twinx()
    if pts:
        ax2.plot([p[0] for p in pts], [p[2] / 1e6 for p in pts], "s--", color="tab:orange", label="ours params (M)")
    if paper_params_m:
        ks = sorted(paper_params_m)
        ax2.plot(ks, [paper_params_m[k] for k in ks], "^", color="tab:gray", label="paper params (M, quoted)")
    ax2.set_ylabel("parameters (M)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def image_panel(out_png: str | Path, title: str, images: Sequence[tuple[str, str | Path]]) -> Path:
    """A row of images (label, PNG path), e.g. Figure 8/9's real-image comparisons."""
    return image_grid(out_png, title, [images])


def image_grid(out_png: str | Path, title: str, rows: Sequence[Sequence[tuple[str, str | Path]]]) -> Path:
    """Rows of images (label, PNG path), e.g. rainy | background | rain layer for each photo."""
    plt = _pyplot()

    from derainkit.io import read_image

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.2 * len(rows) + 0.6), squeeze=False)
    for ax_row, images in zip(axes, rows):
        for ax in ax_row:
            ax.axis("off")
        for ax, (label, path) in zip(ax_row, images):
            if not writes_outputs() and not Path(path).is_file():
                continue  # a plan or fill walk: the image is one of the records not computed yet
            ax.imshow(read_image(path))
            ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def render_rows(out_dir: str | Path, item: str, title: str, rows: Sequence[Mapping[str, Any]],
                notes: Sequence[str] = ()) -> Path:
    """``<item>.csv`` and ``<item>.md`` of plain rows (one dict each, the same keys), for tables that are
    not PSNR/SSIM against a paper (NIQE of photos, intrinsic dimensions, verdicts). Floats print with
    4 decimals in the Markdown; the CSV keeps them whole. Returns the Markdown path."""
    out_dir = _output_dir(out_dir)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / f"{item}.csv", buf.getvalue())
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None or v == "" else str(v))  # noqa: E731
    lines = [f"# {title}", "", *[f"- {n}" for n in notes], "", "| " + " | ".join(fields) + " |",
             "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(cell(r.get(f)) for f in fields) + " |" for r in rows]
    md = out_dir / f"{item}.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md


def _output_dir(folder: str | Path) -> Path:
    """Where tables and figures go: ``folder``, except during a plan or fill walk of a notebook, when the
    committed ones must not change; they then go to ``$DERAINKIT_WALK_OUT`` (a scratch folder)."""
    if writes_outputs():
        return Path(folder)
    scratch = os.environ.get("DERAINKIT_WALK_OUT")
    if not scratch:
        raise DerainkitError("a plan/fill walk needs $DERAINKIT_WALK_OUT (a scratch folder for its tables)")
    return Path(scratch)


def render_curves(out_dir: str | Path, name: str, title: str, logs: Mapping[str, Path]) -> Path | None:
    """The logged training losses of several runs (their ``log.csv``; run folders are not committed, so this
    keeps the curves): ``<name>.csv`` (run, iteration and every ``train_*`` column) and ``<name>.png``, one
    panel per loss with a line per run. None without logs."""
    series: dict[str, list[dict[str, str]]] = {}
    for label, path in logs.items():
        if Path(path).is_file():
            with open(path, newline="") as fh:
                series[label] = [r for r in csv.DictReader(fh) if any(k.startswith("train_") and v for k, v in r.items())]
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    losses = list(dict.fromkeys(k for rows in series.values() for k in rows[0] if k.startswith("train_")))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["run", "iteration", *losses], restval="", extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for label, rows in series.items():
        w.writerows({"run": label, **r} for r in rows)
    out_dir = _output_dir(out_dir)
    atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())
    plt = _pyplot()
    cols = min(4, len(losses))
    nrows = -(-len(losses) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, losses):
        for label, rows in series.items():
            pts = [(float(r["iteration"]), float(r[col])) for r in rows if r.get(col)]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=label)
        ax.set_title(col.removeprefix("train_"), fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(losses):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir / f"{name}.png")


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed; notebooks show the PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    plt = _pyplot()

    out_png = _output_dir(Path(out_png).parent) / Path(out_png).name
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        # No Software/date metadata: unchanged records re-render byte-identical PNGs.
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out_png
