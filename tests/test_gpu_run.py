"""scripts/gpu_run.py: the plan (steps, budgets, dry-run scaling), failure handling, and one dry run end to end."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


gpu_run = load_script("gpu_run")


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("total", [30.0, 600.0, 3600.0])
def test_plan_budgets_fit_the_total(dry, total, tmp_path):
    plan = gpu_run.make_plan(total, dry, tmp_path)
    names = [s.name for s in plan.steps]
    assert names[0] == "tests" and names[-1] == "train" and any(n.startswith("bench:") for n in names)
    assert all(s.budget_s > 0 for s in plan.steps)
    assert sum(s.budget_s for s in plan.steps) + plan.reserve_s <= total + 1e-9
    # the training step is planned with what the others leave
    assert plan.steps[-1].budget_s == pytest.approx(total - plan.reserve_s - sum(s.budget_s for s in plan.steps[:-1]))
    # budgets scale with the total
    double = gpu_run.make_plan(2 * total, dry, tmp_path)
    assert double.steps[0].budget_s == pytest.approx(2 * plan.steps[0].budget_s, rel=0.05)


def test_plan_real_vs_dry(tmp_path):
    real = gpu_run.make_plan(600, False, tmp_path)
    dry = gpu_run.make_plan(600, True, tmp_path)
    real_tests, dry_tests = real.steps[0].command, dry.steps[0].command
    assert "tests/test_cuda_paths.py" in real_tests and "-x" not in real_tests
    assert dry_tests[-1:] == ["tests/test_cuda_paths.py"] and "-x" in dry_tests and "-q" in dry_tests
    real_bench = [s for s in real.steps if s.name.startswith("bench:")]
    dry_bench = [s for s in dry.steps if s.name.startswith("bench:")]
    assert {s.name for s in real_bench} == {"bench:flops", "bench:train", "bench:device", "bench:peers_step"}
    assert all("--quick" not in s.command for s in real_bench)
    assert len(dry_bench) == 1 and "--quick" in dry_bench[0].command
    for s in real_bench + dry_bench:  # every benchmark writes into the plan's root
        assert s.command[s.command.index("--out") + 1] == str(tmp_path / "bench" / "gpu")
    with pytest.raises(ValueError):
        gpu_run.make_plan(0, True, tmp_path)


def test_train_configs(tmp_path):
    from derainkit.train import RunConfig

    dry = RunConfig.from_dict(gpu_run.train_config(True, tmp_path))
    assert dry.device == "cpu" and dry.iterations == 2 * gpu_run.DRY_ITERATIONS
    assert Path(dry.out_dir).is_relative_to(tmp_path)
    real = RunConfig.from_dict(gpu_run.train_config(False, tmp_path))
    shipped = RunConfig.from_file(REPO / gpu_run.SHIPPED_CONFIG)
    # the shipped run's recipe, at the paper's 500 epochs, from its weights, with the gpu profile's settings
    for key in ("model", "model_config", "loss", "lr", "lr_milestones", "crop", "batch", "seed", "exemplar"):
        assert getattr(real, key) == getattr(shipped, key), key
    assert real.epochs == 500 and real.iterations is None and real.init_weights == gpu_run.SHIPPED_WEIGHTS
    assert (real.device, real.precision, real.channels_last) == ("cuda", "bf16", True)
    assert real.train_data == "data:rain100l/train" and real.val_data == "data:rain100l/test"


def test_speed_model():
    per_it, overhead = gpu_run._speed([{"iterations": 50, "seconds": 20.0}])
    assert (per_it, overhead) == (0.4, 0.0)  # one chunk: all time counts as iterations (over-estimate)
    per_it, overhead = gpu_run._speed([{"iterations": 50, "seconds": 20.0}, {"iterations": 500, "seconds": 42.5}])
    assert per_it == pytest.approx(0.05) and overhead == pytest.approx(17.5)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    py = sys.executable
    steps = [gpu_run.Step("fails", 5, [py, "-c", "import sys; print('boom'); sys.exit(3)"]),
             gpu_run.Step("hangs", 4, [py, "-c", "import time; time.sleep(30)"]),
             gpu_run.Step("works", 5, [py, "-c", "print('fine')"])]
    plan = gpu_run.Plan(total_s=20, reserve_s=0.5, dry_run=True, root=tmp_path, steps=steps)
    t0 = time.monotonic()
    report = gpu_run.execute(plan, progress=False)
    assert time.monotonic() - t0 < 15  # the hanging step was cut at its share
    by = {s["name"]: s for s in report["steps"]}
    assert by["fails"]["status"] == "failed" and by["fails"]["returncode"] == 3 and "boom" in by["fails"]["detail"]
    assert by["hangs"]["status"] == "timeout" and by["hangs"]["seconds"] < 8
    assert by["works"]["status"] == "ok"
    assert report["status"] == "failed" and report["failed_steps"] == ["fails", "hangs"]
    assert json.loads(plan.report_path.read_text())["failed_steps"] == ["fails", "hangs"]


def _tree(path: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in path.rglob("*")} if path.exists() else {}


def test_dry_run_end_to_end(tmp_path, capsys):
    """The whole run scaled down on CPU: the three kinds of step succeed, the report says so, a second run
    continues the training run, and nothing is written under results/."""
    results_before = _tree(REPO / "results")
    out = tmp_path / "dry"
    t0 = time.monotonic()
    rc = gpu_run.main(["--dry-run", "--budget", "50", "--out", str(out), "--no-progress"])
    seconds = time.monotonic() - t0
    report = json.loads((out / "gpu" / "gpu_run.json").read_text())
    assert rc == 0, json.dumps(report["steps"], indent=1)
    assert report["dry_run"] and report["status"] == "ok" and report["budget_s"] == 50
    assert [s["name"] for s in report["steps"]] == ["tests", "bench:device", "train"]
    assert all(s["status"] == "ok" and s["seconds"] <= s["timeout_s"] + 1 for s in report["steps"])
    assert seconds < 50 and report["seconds"] <= 50
    assert {"commit", "device", "versions"} <= set(report["provenance"]) and report["device"].startswith("cpu")
    train = report["steps"][-1]["train"]
    assert train["iteration"] == gpu_run.DRY_ITERATIONS and not train["finished"] and not train["resumed"]
    assert Path(train["run_dir"]).is_relative_to(out)
    assert (out / "bench" / "gpu" / "device_knn_quick.csv").is_file() and (out / "bench" / "gpu" / "SUMMARY-quick.md").is_file()
    assert "dry run: outputs in" in capsys.readouterr().out
    assert _tree(REPO / "results") == results_before


@pytest.mark.usefixtures("one_torch_thread")
def test_train_worker_resumes_across_runs(tmp_path):
    """Two gpu-runs in a row: the second continues the first's run from its checkpoint and finishes it."""
    from derainkit.fsutil import atomic_write_text

    config = tmp_path / "train_config.json"
    atomic_write_text(config, json.dumps(gpu_run.train_config(True, tmp_path)))
    results = []
    for n in range(2):
        result = tmp_path / f"result{n}.json"
        assert gpu_run.train_worker(config, 60.0, gpu_run.DRY_ITERATIONS, result) == 0
        results.append(json.loads(result.read_text()))
    first, second = results
    assert (first["start_iteration"], first["iteration"], first["finished"]) == (0, 2, False)
    assert second["resumed"] and (second["start_iteration"], second["iteration"], second["finished"]) == (2, 4, True)
    assert first["run_dir"] == second["run_dir"] and (Path(second["run_dir"]) / "model.safetensors").is_file()


@pytest.mark.parametrize("dry", [False, True])
def test_a_plan_without_training_gives_its_whole_budget_to_the_tests_and_benchmarks(dry, tmp_path):
    full = gpu_run.make_plan(600, dry, tmp_path)
    bare = gpu_run.make_plan(600, dry, tmp_path, train=False)
    assert [s.name for s in bare.steps] == [s.name for s in full.steps if s.name != "train"]
    assert sum(s.budget_s for s in bare.steps) == pytest.approx(600 - bare.reserve_s)
    for a, b in zip(bare.steps, full.steps):  # same proportions, each step given more time
        assert a.command == b.command and a.budget_s > b.budget_s
        assert a.budget_s / bare.steps[0].budget_s == pytest.approx(b.budget_s / full.steps[0].budget_s)
