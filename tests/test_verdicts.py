"""derainkit.experiments.verdicts: every ablation's verdict in one table, read from the rendered tables."""
from __future__ import annotations

import csv
import json

import pytest

from derainkit.experiments import Row, render_table
from derainkit.experiments import paper_values as paper
from derainkit.experiments import seeds as sd
from derainkit.experiments import verdicts


def _rec(psnr: float, seed: int) -> dict:
    return {"key": f"r{seed}-{psnr}", "spec": {"kind": "train_eval", "run": {"seed": seed}}, "n_images": 20,
            "metrics": {p: {"psnr": psnr + (1.4 if p == "matlab-y" else 0.0), "ssim": 0.9, "input_psnr": 20.0,
                            "input_ssim": 0.5} for p in ("msgnn-rgb", "matlab-y")},
            "provenance": {"commit": "abc1234", "device": "cpu"}, "parameters": 1000, "wall_seconds": 600.0}


def _row(psnrs):
    return sd.replicate([_rec(p, s) for p, s in zip(psnrs, (66, 67, 68))])


def _render_table5(folder):
    rows = [Row("k = 3", _row([29.40, 29.45, 29.42]), {"Rain200H": paper.TABLE5[3]}, x=3),
            Row("k = 5", _row([29.60, 29.62, 29.61]), {"Rain200H": paper.TABLE5[5]}, x=5),
            Row("k = 7", _row([29.80, 29.85, 29.82]), {"Rain200H": paper.TABLE5[7]}, x=7),
            Row("k = 9", None, {}, why_not_run="too costly here", x=9)]
    render_table(folder, "table5", "Table 5", rows, profile="cpu", protocols=["msgnn-rgb", "matlab-y"],
                 test_data="data:rain100l/test", reference="k = 5")


def test_collects_each_rows_verdict_once_under_the_judged_protocol(tmp_path):
    _render_table5(tmp_path)
    lines, missing = verdicts.collect(tmp_path)
    assert missing == [item for item, _, _ in verdicts.ITEMS if item != "table5"]
    by = {x["setting"]: x for x in lines}
    assert list(by) == ["k = 3", "k = 7", "k = 9"]  # the reference row and per-seed lines are left out
    assert by["k = 3"]["verdict"] == sd.REPRODUCED and by["k = 7"]["verdict"] == sd.CONTRADICTED
    assert by["k = 9"]["verdict"] == "not run: too costly here" and by["k = 9"]["psnr"] == ""
    assert float(by["k = 3"]["psnr"]) == pytest.approx(29.4233, abs=1e-4)  # msgnn-rgb, not matlab-y's +1.4
    assert float(by["k = 3"]["paper_diff"]) == pytest.approx(-0.126) and by["k = 3"]["reference"] == "k = 5"
    assert float(by["k = 3"]["our_diff"]) == pytest.approx(29.4233 - 29.61, abs=1e-3)
    d = sd.difference(_row([29.40, 29.45, 29.42]), _row([29.60, 29.62, 29.61]), "msgnn-rgb")
    assert float(by["k = 3"]["our_diff_2se"]) == pytest.approx(2 * d.se, abs=1e-4)


def test_rendered_summary_counts_verdicts_and_the_stores_cost(tmp_path):
    profile_dir = tmp_path / "cpu"
    _render_table5(profile_dir)
    (profile_dir / "runs").mkdir()
    for i, secs in enumerate((1800.0, 5400.0)):
        (profile_dir / "runs" / f"k{i}.json").write_text(json.dumps({"key": f"k{i}", "wall_seconds": secs}))
    md, path = verdicts.write("cpu", tmp_path)
    text = md.read_text()
    assert "| table5 | k = 3 | k = 5 | 3 | 29.423 ± 0.025 | -0.126 | -0.187 ± 0.031 | reproduced |" in text
    assert "reproduced: 1, not resolved at this budget: 0, contradicted: 1" in text
    assert ("Not rendered yet at this profile: table2, table3, table4, fig7, fig8, fig9, code-vs-paper, "
            "exemplar-policies") in text
    assert "Store: 2 records, 2.0 h of summed wall time" in text
    assert [r["setting"] for r in csv.DictReader(path.open())] == ["k = 3", "k = 7", "k = 9"]


def test_the_command_refuses_a_profile_without_results(tmp_path, capsys):
    assert verdicts.main(["--profile", "gpu", "--results", str(tmp_path)]) == 2
    assert "no results for profile 'gpu'" in capsys.readouterr().out


def test_the_results_root_follows_the_notebooks_environment_variable(tmp_path, monkeypatch, capsys):
    _render_table5(tmp_path / "scratch" / "cpu")
    monkeypatch.setenv("DERAINKIT_RESULTS", str(tmp_path / "scratch"))
    assert verdicts.main(["--profile", "cpu"]) == 0
    assert (tmp_path / "scratch" / "cpu" / "verdicts.md").is_file() and "| table5 | k = 3 |" in capsys.readouterr().out


def test_the_summary_prints_the_tables_own_three_place_figures(tmp_path):
    # A difference of +0.37152 (the table prints +0.372) read back from a 4-place CSV as 0.3715 and
    # rounded again to 3 places came out +0.371 in the summary.
    rows = [Row("k = 3", _row([30.05077, 30.05087, 30.05097]), {"Rain200H": paper.TABLE5[3]}, x=3),
            Row("k = 5", _row([29.67930, 29.67935, 29.67940]), {"Rain200H": paper.TABLE5[5]}, x=5)]
    render_table(tmp_path / "cpu", "table5", "Table 5", rows, profile="cpu", protocols=["msgnn-rgb"],
                 test_data="data:rain100l/test", reference="k = 5")
    table = (tmp_path / "cpu" / "table5.md").read_text()
    d = sd.difference(rows[0].record, rows[1].record, "msgnn-rgb")
    assert f"{d.mean:+.3f} ± {2 * d.se:.3f}" in table and f"{d.mean:+.3f}" == "+0.372"
    md, _ = verdicts.write("cpu", tmp_path)
    line = next(x for x in md.read_text().splitlines() if x.startswith("| table5 | k = 3 |"))
    assert f"| 30.051 ± 0.000 | -0.126 | {d.mean:+.3f} ± {2 * d.se:.3f} |" in line
