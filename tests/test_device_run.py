"""scripts/device_run.py: the GPU run on a machine reached in small calls, checked end to end here with gpu_run's
dry run: data split into parts under a size budget, each staged with its digests, the run only once every part
is there, its results packed and unpacked, and the training run's checkpoint carried out again."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

device_run = load_script("device_run")


def _shared_data(root: Path, n_train: int = 6, n_test: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            for kind in ("rain", "norain"):
                path = root / "rain100l" / split / kind / f"norain-{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return root


def test_parts_fit_the_budget_and_carry_the_validation_pairs_only(tmp_path):
    data = _shared_data(tmp_path / "shared")
    size = (data / "rain100l" / "train" / "rain" / "norain-1.png").stat().st_size
    budget = 5 * size
    p = device_run.prepare(data, tmp_path / "results", None, budget, carry=tmp_path / "carry")
    rels = [rel for part in p["parts"] for rel, _ in part]
    assert all(sum(f.stat().st_size for _, f in part) <= budget for part in p["parts"]) and len(p["parts"]) >= 4
    assert sum(r.startswith("rain100l/train/") for r in rels) == 12  # every training file
    # the run validates on the first val_limit (10) test pairs, in the order the kit reads them
    tests = sorted({Path(r).name for r in rels if r.startswith("rain100l/test/")})
    assert tests == sorted(f"norain-{i}.png" for i in range(1, 11))  # natural order: 1..10, not 1, 10, 11, 12, 2...
    assert not p["run"] and not (tmp_path / "carry").exists()  # the plan alone writes nothing


def test_stage_refuses_a_damaged_file(tmp_path):
    data = _shared_data(tmp_path / "shared")
    carry = tmp_path / "carry"
    device_run.prepare(data, tmp_path / "results", 1, 10 << 20, carry=carry)
    victim = next((carry / "data").rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(SystemExit, match="damaged in transit"):
        device_run.stage(tmp_path / "home", carry)


@pytest.mark.usefixtures("one_torch_thread")
def test_prepare_stage_go_unpack_round_trip_with_the_dry_run(tmp_path, capsys):
    data = _shared_data(tmp_path / "shared")
    local_results, home, out, carry = tmp_path / "results", tmp_path / "home", tmp_path / "out", tmp_path / "carry"
    budget = 20 * (data / "rain100l" / "train" / "rain" / "norain-1.png").stat().st_size
    n = len(device_run.prepare(data, local_results, None, budget, carry=carry)["parts"])
    assert n >= 2
    device_run.prepare(data, local_results, n, budget, carry=carry)
    with pytest.raises(SystemExit, match=r"parts \[1"):  # the last call cannot run before the others are staged
        device_run.go(tmp_path / "other_home", 40, True, out, carry)
    for k in range(1, n + 1):
        device_run.prepare(data, local_results, k, budget, carry=carry)
        if k < n:
            device_run.stage(home, carry)
    parts = device_run.plan(data, local_results, budget)["parts"]

    def staged():
        return {p.relative_to(home / "data").as_posix() for p in (home / "data").rglob("*.png")}

    assert staged() == {rel for part in parts[:-1] for rel, _ in part}
    assert device_run.go(home, 40, True, out, carry) == 0  # stages the last part itself
    assert staged() == {rel for part in parts for rel, _ in part}
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.tar.gz", "latest.pt"]
    # here again: the report, logs and benchmark files land in results/, the checkpoint in its run
    unpack_to = tmp_path / "repo_results"
    device_run.unpack(out, unpack_to)
    report = json.loads((unpack_to / "gpu" / "gpu_run.json").read_text())
    assert report["dry_run"] and report["status"] == "ok"
    assert (unpack_to / "bench" / "gpu" / "device_knn_quick.csv").is_file()
    run = device_run.gpu_run_dir(unpack_to, dry_run=True)
    assert (run / "checkpoints" / "latest.pt").read_bytes() == (out / "latest.pt").read_bytes()
    assert (run / "log.csv").is_file() and "to commit: git add" in capsys.readouterr().out


@pytest.mark.usefixtures("one_torch_thread")
def test_go_without_training_needs_nothing_carried(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    assert device_run.go(home, 40, True, out, tmp_path / "no_carry", train=False) == 0
    assert not (home / "staged").exists() and not (home / "data").exists()  # nothing staged, nothing asked for
    unpack_to = tmp_path / "repo_results"
    device_run.unpack(out, unpack_to)
    report = json.loads((unpack_to / "gpu" / "gpu_run.json").read_text())
    assert report["status"] == "ok" and [s["name"] for s in report["steps"]] == ["tests", "bench:device"]
    assert (unpack_to / "bench" / "gpu" / "device_knn_quick.csv").is_file()


def test_a_local_training_run_travels_with_the_last_part(tmp_path):
    data = _shared_data(tmp_path / "shared")
    results = tmp_path / "results"
    run = device_run.gpu_run_dir(results)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"weights and optimiser state")
    (run / "log.csv").write_text("iteration,loss\n250,-0.9\n")
    carry = tmp_path / "carry"
    p = device_run.prepare(data, results, None, 10 << 20, carry=carry)
    n = len(p["parts"])
    device_run.prepare(data, results, n, 10 << 20, carry=carry)
    head = json.loads((carry / "part.json").read_text())
    carried = {e["path"] for e in head["files"] if e["kind"] == "results"}
    rel = run.relative_to(results).as_posix()
    assert carried == {f"{rel}/log.csv", f"{rel}/checkpoints/latest.pt"}
    device_run.stage(tmp_path / "home", carry)
    assert (tmp_path / "home" / "results" / rel / "checkpoints" / "latest.pt").read_bytes() == b"weights and optimiser state"


def test_stage_without_a_carried_part_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match=r"part.json: not here; run `prepare --part K`"):
        device_run.stage(tmp_path / "home", tmp_path / "no_carry")


def test_a_refusal_is_one_line_with_status_2(tmp_path, capsys):
    assert device_run.main(["prepare", "--shared-data", str(tmp_path / "nothing"), "--budget-mib", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no rain100l/train and rain100l/test there" in err
