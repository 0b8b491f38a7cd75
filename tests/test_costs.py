"""Cost columns of Table 1: benchmark figures attached only to rows of the same model size, rendered before notes."""
from __future__ import annotations

import csv

from derainkit.experiments import costs
from derainkit.experiments.paper_values import Quoted
from derainkit.experiments.tables import Row, render_table

PEERS = """model,task,params,batch,size,loss,seconds,ratio_vs_prenet,commit,device
prenet,train_step,168963,8,64x64,ssim,1.5,1.0,abc1234,cpu box
prenet,infer,,,1000x1000,,50.0,1.0,abc1234,cpu box
rescan,train_step,149823,8,64x64,mse,3.0,2.0,abc1234,cpu box
rescan,infer,,,1000x1000,,25.0,0.5,abc1234,cpu box
spanet,train_step,283716,8,64x64,spanet,,,abc1234,cpu box
"""
THROUGHPUT = """model,params,batch,crop,seconds_per_iteration,commit,device
prenet,168963,8,64,2.0,def5678,cpu box
msgnn,2061579,8,64,5.0,def5678,cpu box
"""


def _bench(tmp_path):
    (tmp_path / "peers_step.csv").write_text(PEERS)
    (tmp_path / "train_throughput.csv").write_text(THROUGHPUT)
    return costs.bench_figures(tmp_path)


def test_figures_are_read_with_their_size_and_unmeasured_rows_are_skipped(tmp_path):
    figs = _bench(tmp_path)
    got = {(f.model, f.task): f for f in figs}
    assert set(got) == {("prenet", "train_step"), ("prenet", "infer"), ("rescan", "train_step"), ("rescan", "infer"),
                        ("msgnn", "train_step")}  # spanet's step has no time: not a figure
    assert got["rescan", "infer"].parameters == 149823  # inherited from its train_step row
    assert got["msgnn", "train_step"].vs_prenet == 2.5  # against PReNet in the same file
    assert costs.bench_figures(tmp_path / "absent") == []


def test_a_figure_is_attached_only_to_a_row_of_the_measured_size(tmp_path):
    figs = _bench(tmp_path)
    full = costs.cost_cells("rescan", 149823, figs)
    assert full == {costs.TRAIN_COLUMN: "3.00 (2.00×)", costs.INFER_COLUMN: "25.00 (0.50×)"}
    small = costs.cost_cells("rescan", 12345, figs)  # a small preset: the full-size time would mislead
    assert set(small.values()) == {"–"}
    assert set(costs.cost_cells("msgnn", 1028427, figs).values()) == {"–"}
    # a row not run is costed at the model's default (official) size, which is what make bench measures
    assert costs.row_costs("rescan", None, figs) == full
    assert costs.default_parameters("rescan") == 149823
    # a measured record of another size gets nothing, even when its parameter count is missing
    assert set(costs.row_costs("rescan", {"metrics": {"msgnn-rgb": {}}}, figs).values()) == {"–"}


def test_cost_columns_render_before_notes_and_in_the_csv(tmp_path):
    figs = _bench(tmp_path)
    rec = {"key": "k1", "parameters": 149823, "n_images": 3, "provenance": {"commit": "c", "device": "d"},
           "metrics": {"msgnn-rgb": {"psnr": 30.0, "ssim": 0.9, "input_psnr": 25.0, "input_ssim": 0.8}}}
    rows = [Row("RESCAN", rec, {"Rain100L": Quoted(40.0, None, "Rain100L", "own paper", protocol="Y channel")},
                extra=costs.row_costs("rescan", rec, figs)),
            Row("DualGCN", None, {}, why_not_run="too slow", extra=costs.cost_cells("dualgcn", 1, figs))]
    md = render_table(tmp_path / "out", "t1", "T", rows, profile="p", protocols=["msgnn-rgb"], test_data="x",
                      footnotes=[costs.cost_note(figs)]).read_text()
    head = next(line for line in md.splitlines() if line.startswith("| setting"))
    assert head.endswith(f"| paper Rain100L | {costs.TRAIN_COLUMN} | {costs.INFER_COLUMN} | notes |")
    rescan = next(line for line in md.splitlines() if line.startswith("| RESCAN"))
    assert "| 40.000 / – | 3.00 (2.00×) | 25.00 (0.50×) |" in rescan
    assert "| DualGCN | not run (too slow) | – | – | – |" in md
    assert "`results/bench/peers_step.csv` (abc1234, cpu box)" in md
    with open(tmp_path / "out" / "t1.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    ours = [r for r in lines if r["source"] == "measured here"]
    assert ours[0][costs.TRAIN_COLUMN] == "3.00 (2.00×)"
    assert all(r[costs.TRAIN_COLUMN] == "" for r in lines if r["source"].startswith("quoted"))
