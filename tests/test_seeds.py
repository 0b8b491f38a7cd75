"""Seeds in ablations: one record per seed, mean ± std rows, and the verdict rule on synthetic records."""
from __future__ import annotations

import csv
import math

import pytest

from derainkit.errors import ConfigError, DerainkitError
from derainkit.experiments import Lab, Profile, Row, render_table
from derainkit.experiments import paper_values as paper
from derainkit.experiments import seeds as sd
from derainkit.experiments.tables import comparisons, plot_sweep, plot_table

from conftest import tiny_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rec(psnr: float, seed: int, ssim: float = 0.8, key: str | None = None) -> dict:
    return {"key": key or f"r{seed}-{psnr}", "spec": {"kind": "train_eval", "run": {"seed": seed}}, "n_images": 20,
            "metrics": {"msgnn-rgb": {"psnr": psnr, "ssim": ssim, "input_psnr": 20.0, "input_ssim": 0.5}},
            "provenance": {"commit": "abc1234", "device": "cpu"}, "parameters": 1000, "wall_seconds": 10.0}


def _row(psnrs, seeds=(66, 67, 68), ssim=0.8):
    return sd.replicate([_rec(p, s, ssim) for p, s in zip(psnrs, seeds)])


# ------------------------------------------------------------------------------------- aggregation
def test_replicate_gives_mean_sample_std_and_keeps_each_seed():
    row = _row([30.0, 31.0, 32.0])
    m = row["metrics"]["msgnn-rgb"]
    assert m["psnr"] == pytest.approx(31.0) and m["psnr_std"] == pytest.approx(1.0)  # ddof 1
    assert m["n"] == 3 and m["ssim_std"] == pytest.approx(0.0) and m["input_psnr"] == pytest.approx(20.0)
    assert row["seeds"] == [66, 67, 68] and [r["metrics"]["msgnn-rgb"]["psnr"] for r in row["records"]] == [30, 31, 32]
    assert row["wall_seconds"] == pytest.approx(30.0) and row["parameters"] == 1000
    one = _row([30.0], seeds=(66,))
    assert one["metrics"]["msgnn-rgb"]["psnr_std"] is None and one["metrics"]["msgnn-rgb"]["n"] == 1
    planned = sd.replicate([_rec(30.0, 66), {"key": "x", "planned": True, "metrics": {}}])
    assert planned["planned"] and planned["metrics"] == {}
    with pytest.raises(DerainkitError):
        sd.replicate([])


def test_difference_is_welch_standard_error():
    d = sd.difference(_row([30.0, 31.0, 32.0]), _row([29.0, 29.5, 30.0]), "msgnn-rgb")
    assert d.mean == pytest.approx(31.0 - 29.5)
    assert d.se == pytest.approx(math.sqrt(1.0 / 3 + 0.25 / 3))
    assert d.n_row == d.n_ref == 3
    assert sd.difference(None, _row([1.0]), "msgnn-rgb") is None
    single = sd.difference(_rec(30.0, 66), _rec(29.0, 66), "msgnn-rgb")  # single records are rows of one seed
    assert single.mean == pytest.approx(1.0) and single.se is None and not single.resolved


# ------------------------------------------------------------------------------------- the verdict rule
@pytest.mark.parametrize("row, ref, paper_diff, expected", [
    ([29.40, 29.45, 29.42], [29.60, 29.62, 29.61], -0.126, sd.REPRODUCED),        # same sign, far beyond 2 SE
    ([29.80, 29.85, 29.82], [29.60, 29.62, 29.61], -0.126, sd.CONTRADICTED),      # opposite sign, resolved
    ([29.40, 29.90, 29.60], [29.60, 29.62, 29.61], -0.126, sd.NOT_RESOLVED),      # within 2 SE
    ([29.40], [29.60], -0.126, sd.NOT_RESOLVED),                                  # one seed: no spread
    ([29.40, 29.45, 29.42], [29.60, 29.62, 29.61], None, sd.NO_PAPER_DIFFERENCE),  # the paper gives no number
    ([29.40, 29.45, 29.42], [29.60, 29.62, 29.61], 0.0, sd.NO_PAPER_DIFFERENCE),
])
def test_verdict_rule(row, ref, paper_diff, expected):
    seeds = (66, 67, 68)[: len(row)]
    d = sd.difference(_row(row, seeds), _row(ref, seeds), "msgnn-rgb")
    assert sd.verdict(paper_diff, d) == expected


def test_verdict_boundary_is_strictly_beyond_two_standard_errors():
    d = sd.Difference(mean=-0.2, se=0.1, n_row=3, n_ref=3)
    assert not d.resolved and sd.verdict(-1.0, d) == sd.NOT_RESOLVED
    assert sd.verdict(-1.0, sd.Difference(-0.2001, 0.1, 3, 3)) == sd.REPRODUCED
    assert sd.verdict(1.0, sd.Difference(-0.2001, 0.1, 3, 3)) == sd.CONTRADICTED


# ------------------------------------------------------------------------------------- tables and figures
def _table5_rows():
    return [Row("k = 3", _row([29.40, 29.45, 29.42]), {"Rain200H": paper.TABLE5[3]}, x=3),
            Row("k = 5", _row([29.60, 29.62, 29.61]), {"Rain200H": paper.TABLE5[5]}, x=5),
            Row("k = 7", _row([29.80, 29.85, 29.82]), {"Rain200H": paper.TABLE5[7]}, x=7),
            Row("k = 9", None, {}, why_not_run="skipped", x=9)]


def test_table_shows_mean_std_each_seed_and_verdicts(tmp_path):
    rows = _table5_rows()
    comps = comparisons(rows, "k = 5", ["msgnn-rgb"])
    assert comps["k = 3"].paper_diff == pytest.approx(-0.126) and comps["k = 3"].verdict == sd.REPRODUCED
    assert comps["k = 7"].paper_diff == pytest.approx(-0.062) and comps["k = 7"].verdict == sd.CONTRADICTED
    assert comps["k = 5"].verdict == sd.REFERENCE and comps["k = 9"].verdict == sd.NO_PAPER_DIFFERENCE
    md = render_table(tmp_path, "table5", "Table 5", rows, profile="cpu", protocols=["msgnn-rgb"],
                      test_data="data:rain100l/test", reference="k = 5").read_text()
    assert "29.423 ± 0.025 / 0.8000 ± 0.0000" in md and "seeds 66, 67, 68" in md
    assert "| -0.126 |" in md and sd.REPRODUCED in md and sd.CONTRADICTED in md and "not run (skipped)" in md
    with open(tmp_path / "table5.csv", newline="") as fh:
        lines = [r for r in csv.DictReader(fh) if r["setting"] == "k = 3" and r["source"].startswith("measured")]
    mean, *each = lines
    assert mean["source"] == "measured here (mean over seeds)" and mean["n_seeds"] == "3"
    assert float(mean["psnr_std"]) == pytest.approx(0.0252, abs=1e-4) and mean["verdict"] == sd.REPRODUCED
    assert float(mean["paper_diff"]) == pytest.approx(-0.126) and mean["reference"] == "k = 5"
    assert [(r["seed"], float(r["psnr"])) for r in each] == [("66", 29.40), ("67", 29.45), ("68", 29.42)]
    # figures draw the spread; unchanged records re-render byte-identically
    png = plot_table(tmp_path / "t5.png", "Table 5", rows, "msgnn-rgb")
    sweep = plot_sweep(tmp_path / "t5s.png", "Table 5", rows, "msgnn-rgb", "k")
    first = (png.read_bytes(), sweep.read_bytes())
    plot_table(tmp_path / "t5.png", "Table 5", rows, "msgnn-rgb")
    plot_sweep(tmp_path / "t5s.png", "Table 5", rows, "msgnn-rgb", "k")
    assert first == (png.read_bytes(), sweep.read_bytes())


def test_reference_must_be_a_row_and_single_records_keep_their_table(tmp_path):
    rows = _table5_rows()
    with pytest.raises(DerainkitError, match="not settings"):
        comparisons(rows, "k = 11", ["msgnn-rgb"])
    single = [Row("k = 3", _rec(29.4, 66), {"Rain200H": paper.TABLE5[3]}, x=3)]
    md = render_table(tmp_path, "t", "T", single, profile="smoke", protocols=["msgnn-rgb"], test_data="x").read_text()
    assert "29.400 / 0.8000" in md and "verdict" not in md and "±" not in md


# ------------------------------------------------------------------------------------- the Lab
def test_profile_seeds_are_checked():
    assert Profile().seeds == (66,)
    assert Profile.from_params(seeds=[66, 1, 2]).seeds == (66, 1, 2)
    for bad in ([], [1, 1], [-1], [1.5]):
        with pytest.raises(ConfigError, match="seeds"):
            Profile.from_params(seeds=bad)
    with pytest.raises(ConfigError, match="seeds parameter"):
        Profile.from_params(run_overrides={"seed": 3})


def test_lab_trains_once_per_seed_and_reuses(tmp_path, monkeypatch):
    monkeypatch.delenv("DERAINKIT_RESULTS", raising=False)
    lab = Lab(tiny_profile(tmp_path, seeds=(66, 3)))
    row = lab.train_eval_seeds(model_config={"k": 3})
    keys = [r["key"] for r in row["records"]]
    assert row["seeds"] == [66, 3] and len(set(keys)) == 2
    assert [r["spec"]["run"]["seed"] for r in row["records"]] == [66, 3]
    psnrs = [r["metrics"]["matlab-y"]["psnr"] for r in row["records"]]
    assert row["metrics"]["matlab-y"]["psnr"] == pytest.approx(sum(psnrs) / 2)
    assert row["metrics"]["matlab-y"]["psnr_std"] == pytest.approx(abs(psnrs[0] - psnrs[1]) / math.sqrt(2))
    # the single run of a table (Table 1's row) is the first seed's record
    assert lab.train_eval(model_config={"k": 3})["key"] == keys[0]
    # a later session with a third seed trains only that one
    import derainkit.train as train_mod

    trained = []
    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda cfg, **kw: trained.append(cfg.seed) or real(cfg, **kw))
    more = Lab(tiny_profile(tmp_path, seeds=(66, 3, 5))).train_eval_seeds(model_config={"k": 3})
    assert trained == [5] and [r["key"] for r in more["records"]][:2] == keys
    with pytest.raises(ConfigError, match="seeds"):
        lab.train_eval_seeds(seed=1)


def _png_size(path) -> tuple[int, int]:
    import struct

    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_an_item_without_paper_numbers_is_drawn_without_an_empty_paper_panel(tmp_path):
    with_paper = plot_table(tmp_path / "a.png", "Table 5", _table5_rows(), "msgnn-rgb")
    no_paper = [Row(r.setting, r.record, {}, why_not_run=r.why_not_run, x=r.x) for r in _table5_rows()]
    alone = plot_table(tmp_path / "b.png", "Figure 8", no_paper, "msgnn-rgb")
    (w2, h2), (w1, h1) = _png_size(with_paper), _png_size(alone)
    assert h1 == h2 and w1 == pytest.approx(w2 / 2, rel=0.01)  # one 5-inch panel instead of two
