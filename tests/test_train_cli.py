"""`derainkit train` (through add_train_parser): runs, resume, print-config, one-line errors."""
from __future__ import annotations

import argparse
import json

import pytest

from derainkit.train.cli import add_train_parser, main

TINY_SETS = ["model_config.stages=2", "model_config.channels=8", "model_config.res_blocks=1", "crop=32", "batch=2",
             "val_limit=1", "val_protocols=[msgnn-rgb]", "exemplar=none", "device=cpu", "checkpoint_every=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAINKIT_CACHE", str(tmp_path / "cache"))


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="derainkit")
    add_train_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["train", *argv])
    return args.func(args)


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def test_train_stop_and_resume(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--model", "prenet", "--out", str(out), "--no-progress", *_sets(TINY_SETS + ["iterations=4"])]
    assert _run(argv + ["--max-iterations", "2"]) == 0
    text = capsys.readouterr().out
    run_dir = next(out.iterdir())
    assert f"run folder: {run_dir}" in text and "stopped (resume with --resume)" in text
    assert _run(["--resume", str(run_dir), "--no-progress"]) == 0  # config read from the run folder
    text = capsys.readouterr().out
    assert "finished at iteration 4/4" in text and "msgnn-rgb: PSNR" in text and "model.safetensors" in text
    assert json.loads((run_dir / "run.json").read_text())["finished"]


def test_config_file_and_print_config(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: prenet\niterations: 5\nlr: 1e-3\n")
    assert _run([str(cfg), "--set", "model_config.stages=2", "--out", str(tmp_path / "o"), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "# config hash " in text and "lr: 0.001" in text and "stages: 2" in text and "iterations: 5" in text
    assert main([str(cfg), "--print-config"]) == 0  # python -m derainkit.train.cli


@pytest.mark.parametrize("argv, message", [
    (["--model", "prenet", "--set", "learning_rate=1"], "unknown run config key 'learning_rate'; valid keys: ["),
    (["--model", "prenet", "--set", "lr"], "must look like key=value"),
    (["--model", "prenet", "--set", "model_config.depth=3"], "unknown PReNet config key(s) ['depth']"),
    (["--model", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["--model", "prenet", "--set", "train_data=/no/such/folder", "--set", "iterations=1"],
     "/no/such/folder: data folder not found"),
    (["missing.yaml"], "missing.yaml: run config file not found"),
    ([], "nothing to train"),
    (["--resume", "/no/such/run"], "/no/such/run: run folder not found"),
])
def test_errors_are_one_line_with_status_2(argv, message, capsys):
    assert _run(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("derainkit: error: ") and message in err
    assert "Traceback" not in err


def test_resume_auto_starts_then_continues_then_leaves_a_finished_run(tmp_path, capsys):
    """The same command every sitting: starts the run, then continues it, then finds it finished."""
    out = tmp_path / "runs"
    argv = ["--model", "prenet", "--out", str(out), "--no-progress", "--resume", "auto", "--max-iterations", "2",
            *_sets(TINY_SETS + ["iterations=4"])]
    assert _run(argv) == 0
    assert "stopped (resume with --resume) at iteration 2/4" in capsys.readouterr().out
    assert _run(argv) == 0
    assert "finished at iteration 4/4" in capsys.readouterr().out
    run_dir = next(out.iterdir())
    weights = (run_dir / "model.safetensors").read_bytes()
    assert _run(argv) == 0  # nothing left to train: the finished run is reported, its export untouched
    assert "finished at iteration 4/4" in capsys.readouterr().out
    assert (run_dir / "model.safetensors").read_bytes() == weights
    assert [p.name for p in out.iterdir()] == [run_dir.name]
