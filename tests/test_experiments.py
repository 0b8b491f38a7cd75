"""The results store, the Lab that fills it, quoted paper values and table rendering."""
from __future__ import annotations

import json
import shutil

import pytest

from derainkit.errors import ConfigError, DerainkitError
from derainkit.experiments import Lab, Profile, Row, Store, paper_values as paper, render_table, spec_key
from derainkit.experiments.tables import describe, plot_table

from conftest import tiny_profile


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------- store
def test_spec_key_is_canonical():
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})


def test_store_computes_once_and_force_recomputes(tmp_path):
    store = Store(tmp_path / "runs")
    calls = []

    def compute(key):
        calls.append(key)
        return {"metrics": {"m": {"psnr": 30.0 + len(calls), "ssim": 0.9}}}

    a = store.ensure({"x": 1}, compute)
    b = store.ensure({"x": 1}, compute)
    assert len(calls) == 1 and a == b and a["metrics"]["m"]["psnr"] == 31.0
    c = store.ensure({"x": 1}, compute, force=True)
    assert len(calls) == 2 and c["metrics"]["m"]["psnr"] == 32.0
    assert store.get(a["key"])["metrics"]["m"]["psnr"] == 32.0
    assert [r["key"] for r in store.records()] == [a["key"]]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [f"{a['key']}.json"]  # no temp files


def test_a_crash_leaves_no_record(tmp_path):
    store = Store(tmp_path / "runs")

    def boom(key):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.ensure({"x": 2}, boom)
    assert store.get(spec_key({"x": 2})) is None
    assert not list((tmp_path / "runs").glob("*.json")) if (tmp_path / "runs").exists() else True


def test_corrupt_record_is_named(tmp_path):
    store = Store(tmp_path)
    key = spec_key({"x": 3})
    store.record_path(key).write_text("{half")
    with pytest.raises(DerainkitError, match=f"{key}.json: corrupt results record"):
        store.ensure({"x": 3}, lambda k: {})


def test_profile_parameters_are_strict():
    with pytest.raises(ConfigError, match="unknown profile parameter"):
        Profile.from_params(name="x", iteratons=3)
    assert Profile.from_params(force="1").force is True
    assert Profile.from_params(force="0").force is False
    assert Profile.from_params(protocols=["matlab-y"]).protocols == ("matlab-y",)


# ---------------------------------------------------------------------------------------------- lab


def test_lab_trains_scores_and_reuses(tmp_path, monkeypatch):
    monkeypatch.delenv("DERAINKIT_RESULTS", raising=False)
    lab = Lab(tiny_profile(tmp_path))
    rec = lab.train_eval(model_config={"k": 3})
    assert rec["spec"]["kind"] == "train_eval" and rec["n_images"] == 1
    for proto in ("msgnn-rgb", "matlab-y"):
        assert 5 < rec["metrics"][proto]["psnr"] < 60 and 0 < rec["metrics"][proto]["ssim"] <= 1
    assert rec["run"]["iterations"] == 2 and rec["run_config"]["model_config"]["k"] == 3
    prov = rec["provenance"]
    assert {"commit", "device", "versions"} <= set(prov) or {"commit", "device"} <= set(prov)
    assert (lab.store.root / rec["per_image"]).is_file()
    on_disk = json.loads(lab.store.record_path(rec["key"]).read_text())
    assert on_disk["metrics"] == rec["metrics"]

    # A second Lab (a later session) finds the record and trains nothing.
    import derainkit.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("retrained a stored run"))
    again = Lab(tiny_profile(tmp_path)).train_eval(model_config={"k": 3})
    assert again == rec
    # A different grid cell is a different record.
    assert spec_key(rec["spec"]) != spec_key({**rec["spec"], "test": {}})


def test_data_identity_is_content_not_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DERAINKIT_RESULTS", raising=False)
    from derainkit.data import embedded_root

    copy = tmp_path / "elsewhere"
    shutil.copytree(embedded_root("test"), copy)
    a = Lab(tiny_profile(tmp_path))
    b = Lab(tiny_profile(tmp_path, test_data=str(copy)))
    assert a._test_spec() == b._test_spec()
    ra = a.eval_input()
    rb = b.eval_input()
    assert ra["key"] == rb["key"]
    assert ra["metrics"]["matlab-y"]["psnr"] == pytest.approx(ra["metrics"]["matlab-y"]["input_psnr"])


def test_results_env_overrides_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAINKIT_RESULTS", str(tmp_path / "scratch"))
    lab = Lab(tiny_profile(tmp_path))
    assert lab.root == tmp_path / "scratch" / "t"


def test_lab_from_namespace_reads_notebook_parameters(tmp_path, monkeypatch):
    monkeypatch.delenv("DERAINKIT_RESULTS", raising=False)
    ns = {"profile": "cpu", "results_dir": str(tmp_path), "iterations": 7, "crop": 64, "unrelated": 1,
          "protocols": ["matlab-y"]}
    lab = Lab.from_namespace(ns)
    assert lab.profile.name == "cpu" and lab.profile.iterations == 7 and lab.root == tmp_path / "cpu"
    cfg = lab.run_config(model_config={"k": 7}, crop=48)
    assert cfg.iterations == 7 and cfg.crop == 48 and cfg.model_config["k"] == 7
    paper_like = Lab(Profile(iterations=None, run_overrides={"epochs": 500}))
    cfg = paper_like.run_config()
    assert cfg.iterations is None and cfg.epochs == 500


# ---------------------------------------------------------------------------------------------- tables
def _rec(psnr: float) -> dict:
    return {"key": "abc", "n_images": 3, "metrics": {"msgnn-rgb": {"psnr": psnr, "ssim": 0.8, "input_psnr": 20.0,
                                                                  "input_ssim": 0.5}},
            "provenance": {"commit": "1234567", "device": "cpu"}, "parameters": 1_500_000}


def test_render_labels_every_number_and_is_reproducible(tmp_path):
    rows = [Row("k = 3", _rec(25.5), {"Rain200H": paper.TABLE5[3]}, x=3),
            Row("k = 5", None, {"Rain200H": paper.TABLE5[5]}, why_not_run="skipped", x=5)]
    md = render_table(tmp_path, "table5", "Table 5", rows, profile="smoke", protocols=["msgnn-rgb"],
                      test_data="embedded:test")
    text = md.read_text()
    assert "25.500 / 0.8000" in text and "29.501 / 0.9167" in text and "not run (skipped)" in text
    assert "measured here" in text and "quoted" in text and "1234567" in text
    csv_text = (tmp_path / "table5.csv").read_text()
    assert "measured here" in csv_text and "quoted: MSGNN paper, Table 5" in csv_text and "not run: skipped" in csv_text
    png = plot_table(tmp_path / "table5.png", "Table 5", rows, "msgnn-rgb")
    first = (md.read_bytes(), (tmp_path / "table5.csv").read_bytes(), png.read_bytes())
    render_table(tmp_path, "table5", "Table 5", rows, profile="smoke", protocols=["msgnn-rgb"],
                 test_data="embedded:test")
    plot_table(tmp_path / "table5.png", "Table 5", rows, "msgnn-rgb")
    assert first == (md.read_bytes(), (tmp_path / "table5.csv").read_bytes(), png.read_bytes())
    assert describe(rows).splitlines()[1] == "k = 5 | ours: not run (skipped) | paper: Rain200H: 29.627 / 0.9178"


def test_quoted_values_agree_across_the_papers_tables():
    # The full model (N=4, l=3, s=3, k=5, crop 64) appears in Tables 1-5: one number, transcribed five times.
    full = (29.627, 0.9178)
    assert (paper.table1("MSGNN", "Rain200H").psnr, paper.table1("MSGNN", "Rain200H").ssim) == full
    for q in (paper.TABLE2["M6"], paper.TABLE3[(64, 3)], paper.TABLE4[3], paper.TABLE5[5]):
        assert (q.psnr, q.ssim) == full
    assert paper.TABLE3[(64, 1)].psnr is None  # the paper's '-' (out of memory)
    # Table 1: MSGNN is best in every column, as the paper states.
    for d in paper.TABLE1_DATASETS:
        best = max(paper.TABLE1_METHODS, key=lambda m: paper.table1(m, d).psnr)
        assert best == "MSGNN", d


def test_derain_image_is_stored_and_survives_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("DERAINKIT_RESULTS", raising=False)
    from derainkit.io import read_image

    lab = Lab(tiny_profile(tmp_path))
    rec = lab.train_eval()
    image = lab.find_image(tmp_path / "no-such-folder")  # falls back to the first test image
    assert image.is_file()
    png = lab.derain_image(rec, image, max_side=64)
    out = read_image(png)
    assert max(out.shape[:2]) == 64 and read_image(lab.input_image(png)).shape == out.shape
    # weights gone (a fresh clone has records but not the gitignored training folders): retrained on demand
    shutil.rmtree(lab.root / "train")
    png2 = lab.derain_image(rec, image, max_side=48)
    assert max(read_image(png2).shape[:2]) == 48
    assert (lab.root / "train").is_dir()
    # and the stored result is reused without any model
    import derainkit.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("retrained"))
    shutil.rmtree(lab.root / "train")
    assert lab.derain_image(rec, image, max_side=64) == png
