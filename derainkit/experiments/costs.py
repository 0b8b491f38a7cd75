"""What a method costs on the machine `make bench` ran on: seconds per training step and per 1 MP inference.

Read from the benchmark CSVs (never timed here): ``peers_step.csv`` (every peer's batch-8 64×64 step with
its own loss and Adam, and one 1000×1000 inference, PReNet in the same run), ``train_throughput.csv``
(MSGNN's step) and ``infer.csv`` (the shipped MSGNN at 1 MP). A figure belongs to an architecture *and*
its size, so it is attached to a table row only when the benchmark measured the same parameter count as
the row's model: a small preset trained in the smoke profile gets no full-size figure.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO = Path(__file__).resolve().parents[2]
TRAIN_COLUMN = "train s/step (×PReNet)"
INFER_COLUMN = "1 MP infer s (×PReNet)"


@dataclass(frozen=True)
class BenchFigure:
    model: str
    task: str                # "train_step" (batch 8, 64×64, own loss, Adam) | "infer" (1000×1000, one call)
    seconds: float
    vs_prenet: float | None  # ratio to PReNet's time in the same benchmark run
    parameters: int | None   # of the measured model; None when the CSV does not say
    source: str              # CSV file name
    commit: str
    device: str

    def cell(self) -> str:
        return f"{self.seconds:.2f}" + (f" ({self.vs_prenet:.2f}×)" if self.vs_prenet is not None else "")


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def bench_root(bench_dir: str | Path) -> Path:
    root = Path(bench_dir)
    return root if root.is_absolute() else REPO / root


def peer_figures(path: Path) -> list[BenchFigure]:
    """The timed rows of a ``peers_step`` CSV (``make bench``'s, or the quick run's); an inference row takes its
    model's parameter count from the model's train_step row."""
    peers = _read(path)
    params = {r["model"]: int(r["params"]) for r in peers if r.get("task") == "train_step" and r.get("params")}
    return [BenchFigure(r["model"], r["task"], float(r["seconds"]), _num(r.get("ratio_vs_prenet")),
                        params.get(r["model"]), path.name, r.get("commit", ""), r.get("device", ""))
            for r in peers if _num(r.get("seconds")) is not None and r.get("task") in ("train_step", "infer")]


def bench_figures(bench_dir: str | Path = "results/bench") -> list[BenchFigure]:
    """Every measured training-step and 1 MP inference figure in ``bench_dir`` (rows without a time skipped)."""
    root = bench_root(bench_dir)
    out = peer_figures(root / "peers_step.csv")
    rows = _read(root / "train_throughput.csv")
    prenet = next((_num(r.get("seconds_per_iteration")) for r in rows if r.get("model") == "prenet"), None)
    for r in rows:
        s = _num(r.get("seconds_per_iteration"))
        if r.get("model") == "msgnn" and s is not None:
            out.append(BenchFigure("msgnn", "train_step", s, s / prenet if prenet else None,
                                   int(r["params"]) if r.get("params") else None, "train_throughput.csv",
                                   r.get("commit", ""), r.get("device", "")))
    rows = [r for r in _read(root / "infer.csv") if r.get("size") == "1MP"]
    prenet = next((_num(r.get("seconds")) for r in rows if r.get("model") == "prenet"), None)
    for r in rows:
        s = _num(r.get("seconds"))
        if r.get("model") == "msgnn-shipped" and s is not None:
            out.append(BenchFigure("msgnn", "infer", s, _num(r.get("ratio_vs_prenet")) or (s / prenet if prenet else None),
                                   _shipped_parameters(), "infer.csv", r.get("commit", ""), r.get("device", "")))
    return out


def _shipped_parameters() -> int | None:
    """The shipped MSGNN checkpoint's parameter count (infer.csv measures that model but does not record it)."""
    try:
        from derainkit.models import build_model

        return sum(p.numel() for p in build_model("msgnn").parameters())
    except Exception:  # no shipped weights in this install: leave the figure unmatched
        return None


def cost_cells(model: str | None, parameters: int | None, figures: Iterable[BenchFigure]) -> dict[str, str]:
    """The two cost columns of a table row whose model is ``model`` with ``parameters`` parameters."""
    cells = {TRAIN_COLUMN: "–", INFER_COLUMN: "–"}
    if not model or not parameters:
        return cells
    for f in figures:
        if f.model == model and f.parameters == parameters:
            cells[TRAIN_COLUMN if f.task == "train_step" else INFER_COLUMN] = f.cell()
    return cells


def default_parameters(model: str) -> int:
    """The parameter count of ``model`` at its default (official) size: what the benchmarks measure."""
    from derainkit.models import get_model_spec

    spec = get_model_spec(model)
    return sum(p.numel() for p in spec.build(spec.config_from_dict({})).parameters())


def row_costs(model: str, record: Mapping[str, Any] | None, figures: Iterable[BenchFigure]) -> dict[str, str]:
    """The cost columns of a Table 1 row: for a stored record, of its model at its size; for a row not run,
    of the model at its default size (what its "not run" hours were computed from)."""
    params = (record or {}).get("parameters") or (None if record and record.get("metrics") else default_parameters(model))
    return cost_cells(model, params, figures)


def cost_note(figures: Iterable[BenchFigure]) -> str:
    """The footnote that says what the cost columns are and which benchmark runs they come from."""
    by_file: dict[str, set[str]] = {}
    for f in figures:
        by_file.setdefault(f.source, set()).add(f"{f.commit or 'commit not recorded'}, {f.device or 'device not recorded'}")
    sources = "; ".join(f"`results/bench/{name}` ({' | '.join(sorted(v))})" for name, v in sorted(by_file.items()))
    return ("Cost columns (measured by `make bench`, not in the paper): seconds per training step (batch 8, 64×64, "
            "the method's own loss, Adam) and per 1000×1000 inference, with the ratio to PReNet's time in the same "
            "benchmark run; shown only where the benchmark measured the row's model at the row's size (– otherwise). "
            f"From {sources or 'no benchmark file (run `make bench`)'}.")
