"""Training curves kept from run folders that are not committed, and the NIQE note of the NLCL notebook."""
from __future__ import annotations

import csv

from derainkit.experiments.nlcl_study import niqe_note
from derainkit.experiments.tables import render_curves


def _log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("iteration,epoch,lr,train_G,train_D,val_psnr\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_curves_keep_every_runs_losses_and_skip_missing_logs(tmp_path):
    a = _log(tmp_path / "a" / "log.csv", ["100,1,0.1,7.5,0.25,", "200,2,0.1,6.7,0.20,", "200,2,0.1,,,31.0"])
    b = _log(tmp_path / "b" / "log.csv", ["100,1,0.1,8.0,0.30,"])
    png = render_curves(tmp_path / "out", "c", "T", {"sym": a, "asym": b, "gone": tmp_path / "nope" / "log.csv"})
    assert png == tmp_path / "out" / "c.png" and png.stat().st_size > 1000
    with open(tmp_path / "out" / "c.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["run", "iteration", "train_G", "train_D"]
    # the validation-only line carries no training loss and is dropped
    assert [(r["run"], r["iteration"], r["train_G"]) for r in rows] == [("sym", "100", "7.5"), ("sym", "200", "6.7"),
                                                                        ("asym", "100", "8.0")]
    assert render_curves(tmp_path / "out", "none", "T", {"gone": tmp_path / "nope.csv"}) is None
    assert not (tmp_path / "out" / "none.csv").exists()


def test_niqe_note_says_whether_the_output_beats_the_input():
    rec = {"key": "k", "n_images": 7, "metrics": {"niqe": {"niqe": 3.5, "input_niqe": 4.0}}}
    assert niqe_note("run", rec) == ("NIQE of run on the 7 photos: 3.500 against the input's 4.000, lower (better); "
                                     "record `k`.")
    assert "not lower" in niqe_note("run", {"key": "k", "metrics": {"niqe": {"niqe": 4.5, "input_niqe": 4.0}}})
    assert "not measured yet" in niqe_note("run", {"key": "k", "planned": True, "metrics": {}})
