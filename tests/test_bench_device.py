"""bench/bench_device.py, the GPU run's kNN and inference benchmark: its quick run on this CPU (the code path the
GPU executes), out-of-memory rows that do not end the module, and a full run without CUDA that measures nothing."""
from __future__ import annotations

import csv

import pytest
import torch

from bench import bench_device


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.usefixtures("one_torch_thread")
def test_quick_run_measures_knn_and_inference_with_agreeing_neighbours(tmp_path):
    paths = bench_device.run(tmp_path, quick=True)
    assert [p.name for p in paths] == ["device_knn_quick.csv", "device_infer_quick.csv"]
    knn_rows, infer_rows = _rows(paths[0]), _rows(paths[1])
    assert [r["method"] for r in knn_rows] == ["derainkit", "cdist+topk"]
    for r in knn_rows:
        assert r["status"] == "ok" and float(r["seconds"]) > 0 and float(r["peak_extra_mb"]) >= 0
        assert float(r["agreement"]) == 1.0  # exact search: cdist+topk finds the same neighbour sets
        assert r["commit"] and r["device"].startswith("cpu")
    assert float(knn_rows[1]["ratio_vs_cdist"]) == 1.0
    assert [r["model"] for r in infer_rows] == ["prenet", "msgnn-shipped"]
    assert all(r["status"] == "ok" and r["tile"] == "whole image" and float(r["seconds"]) > 0 for r in infer_rows)
    assert float(infer_rows[0]["ratio_vs_prenet"]) == 1.0
    ratio = float(infer_rows[1]["ratio_vs_prenet"])
    assert ratio == pytest.approx(float(infer_rows[1]["seconds"]) / float(infer_rows[0]["seconds"]), rel=0.02)
    md = bench_device.summarize(paths)
    assert "| m=n=512,e=288,k=5 | derainkit |" in md and "msgnn-shipped" in md


def test_out_of_memory_is_a_row_and_the_module_goes_on(tmp_path, monkeypatch):
    real_cdist = torch.cdist

    def cdist_oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB")

    monkeypatch.setattr(torch, "cdist", cdist_oom)
    path = tmp_path / "knn.csv"
    rows = bench_device._knn_rows(torch.device("cpu"), True, path)
    monkeypatch.setattr(torch, "cdist", real_cdist)
    by = {r["method"]: r for r in rows}
    assert by["cdist+topk"]["status"] == "out of memory" and by["cdist+topk"]["seconds"] == ""
    assert by["derainkit"]["status"] == "ok" and by["derainkit"]["ratio_vs_cdist"] == ""
    assert [r["status"] for r in _rows(path)] == ["ok", "out of memory"]  # written as it went
    assert "out of memory" in bench_device.summarize([path, _write_empty_infer(tmp_path)])


def _write_empty_infer(tmp_path):
    p = tmp_path / "infer.csv"
    p.write_text("size,height,width,model,seconds,ratio_vs_prenet,peak_extra_mb,tile,overlap,status,device\n")
    return p


def test_other_errors_are_not_taken_for_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "cdist", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench_device._knn_rows(torch.device("cpu"), True, tmp_path / "knn.csv")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_full_run_without_cuda_measures_nothing_and_says_so(tmp_path):
    assert bench_device.run(tmp_path, quick=False) == []
    assert list(tmp_path.iterdir()) == []
    assert "Not run: no CUDA device" in bench_device.summarize([])
