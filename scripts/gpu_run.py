#!/usr/bin/env python3
"""One command for a lent GPU: CUDA tests, benchmarks, then training for the minutes that are left.

    python scripts/gpu_run.py                    # on a CUDA machine: results/gpu/ and results/bench/gpu/
    python scripts/gpu_run.py --budget 900       # a longer lease (seconds of wall time overall)
    python scripts/gpu_run.py --dry-run          # the same steps scaled down, on CPU, into a temp folder
    python scripts/gpu_run.py --no-train         # tests and benchmarks only, in the whole budget (needs no data)
    make gpu-run [DRY=1] [BUDGET=600] [NO_TRAIN=1]

Steps, each a subprocess with a timeout taken from the budget (a tqdm bar runs over them):
  tests       pytest on the tests that exercise CUDA paths (tests/test_cuda_paths.py: kNN on CUDA vs the CPU
              and the fp64 reference, MSGNN forward/backward, channels-last, bf16 training, torch.compile;
              plus test_knn_search.py and test_tiling.py); dry run: test_cuda_paths.py with -x -q
  bench:NAME  ``python -m bench.run_all --only NAME`` for the benchmark modules that pick CUDA themselves
              (flops: FLOP/s vs the measured matmul peak; train: it/s at batch 8, 64×64, fp32/bf16/compile;
              device: kNN vs cdist+topk and 1 / 12 MP inference with peak memory; peers_step); the other modules
              measure the CPU only and are not run here (the report lists them); dry run: the device module
              with --quick (toy sizes, CPU) into the scratch folder
  train       continues the shipped MSGNN's training on the GPU (below) for what is left of the budget, in
              chunks sized from the measured speed, checkpointing; dry run: 2 iterations of a tiny MSGNN
Each step's share is fixed in advance (``make_plan``); the training step gets whatever the others left.
With ``--no-train`` the shares of the tests and benchmarks are scaled up to fill the budget: what a short
lease, or one that cannot carry the training data, can still measure.
A failed or timed-out step is recorded and the run goes on; the exit status is 1 if any step did not
succeed (2 for bad arguments, e.g. no CUDA device without --dry-run).

The training run. The shipped checkpoint (derainkit/weights/msgnn_raintrainl.*) was trained for 4000
iterations (160 epochs) on 2 CPU cores; only its exported weights were kept, not its optimizer state. The GPU
run is that config (msgnn_raintrainl.yaml: N=2, M=6, −SSIM, Adam 5e-4 with ÷10 at 60 % and 80 %, crop 64,
batch 8, seed 66, official exemplar pairing) at the paper's length, 500 epochs, started from the shipped
weights (``init_weights``), with the gpu profile's data (data:rain100l/{train,test}) and settings (bf16
autocast, channels-last, CUDA). It lives in results/gpu/train/shipped/<config hash>/ with checkpoints: every
gpu-run resumes it where the last one stopped, until its 12,500 iterations are done.

Outputs: <root>/gpu/gpu_run.json (steps, status, seconds, budget, device, provenance, the training run's
state), <root>/gpu/logs/<step>.log (each subprocess's output), <root>/gpu/train/..., <root>/bench/...;
<root> is results/ (a dry run: --out, default a new temp folder; never results/). It ends by printing what
to ``git add``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit itself, when run from a clone without installing

SHIPPED_CONFIG = "derainkit/weights/msgnn_raintrainl.yaml"
SHIPPED_WEIGHTS = "derainkit/weights/msgnn_raintrainl.safetensors"
CUDA_TESTS = ["tests/test_cuda_paths.py", "tests/test_knn_search.py", "tests/test_tiling.py"]
DRY_TESTS = ["tests/test_cuda_paths.py"]
# Benchmark modules that choose CUDA when it is there (resolve_device("auto")), and each one's share of the
# budget. The others (knn_global, knn_windowed, infer, msgnn_step, irnn, niqe, nlcl_sampling) time the CPU;
# bench_device is their GPU counterpart (kNN vs cdist+topk, 1 / 12 MP inference, device peak memory).
GPU_BENCH = {"flops": 0.12, "train": 0.10, "device": 0.13, "peers_step": 0.08}
DRY_BENCH = {"device": 0.20}
CPU_ONLY_BENCH = ["infer", "irnn", "knn_global", "knn_windowed", "msgnn_step", "niqe", "nlcl_sampling"]
TESTS_SHARE = {False: 0.20, True: 0.35}  # a dry run: mostly interpreter start-up and collection
RESERVE_S = {False: 15.0, True: 2.0}  # kept back for writing the report
DRY_ITERATIONS = 2  # per gpu-run in a dry run (the tiny run's schedule has 4: a second dry run finishes it)


@dataclass
class Step:
    name: str
    budget_s: float  # planned share; the train step's is what the plan leaves (it takes what is left)
    command: list[str] = field(default_factory=list)  # empty for the train step (built when it starts)
    what: str = ""


@dataclass
class Plan:
    total_s: float
    reserve_s: float
    dry_run: bool
    root: Path  # results/ or the dry run's scratch folder
    steps: list[Step]

    @property
    def report_path(self) -> Path:
        return self.root / "gpu" / "gpu_run.json"


def make_plan(total_s: float, dry_run: bool, root: Path, python: str = sys.executable, train: bool = True) -> Plan:
    """The steps and their budgets (seconds): fixed shares of ``total_s`` for tests and benchmarks, the rest
    (less a reserve for the report) for training. Their sum never exceeds ``total_s``. Without ``train`` the
    tests and benchmarks keep their proportions and share the whole usable budget."""
    if total_s <= 0:
        raise ValueError(f"budget must be > 0 seconds, got {total_s}")
    reserve = min(RESERVE_S[dry_run], 0.1 * total_s)
    usable = total_s - reserve
    tests = DRY_TESTS if dry_run else CUDA_TESTS
    pytest_args = ["-x", "-q"] if dry_run else ["-q", "-rs"]
    bench_shares = DRY_BENCH if dry_run else GPU_BENCH
    scale = 1.0 if train else 1.0 / (TESTS_SHARE[dry_run] + sum(bench_shares.values()))
    steps = [Step("tests", scale * TESTS_SHARE[dry_run] * usable, [python, "-m", "pytest", *pytest_args, "-p", "no:cacheprovider",
                                                           *tests], f"pytest {' '.join(tests)}")]
    bench_out = root / "bench" / "gpu"  # beside, not over, the CPU figures the README quotes
    for name, share in bench_shares.items():
        cmd = [python, "-m", "bench.run_all", "--out", str(bench_out), "--only", name] + (["--quick"] if dry_run else [])
        steps.append(Step(f"bench:{name}", scale * share * usable, cmd, f"bench_{name}" + (" --quick" if dry_run else "")))
    if train:
        left = usable - sum(s.budget_s for s in steps)
        steps.append(Step("train", left, [], "tiny MSGNN, 2 iterations, CPU" if dry_run else
                          "continue the shipped MSGNN at 500 epochs (gpu profile: bf16, channels-last)"))
    return Plan(total_s=total_s, reserve_s=reserve, dry_run=dry_run, root=root, steps=steps)


# ----------------------------------------------------------------------------------------- training
def train_config(dry_run: bool, root: Path) -> dict[str, Any]:
    """The run config (a RunConfig dict) of the training step."""
    from derainkit.train import RunConfig

    out_dir = root / "gpu" / "train" / ("dry" if dry_run else "shipped")
    if dry_run:
        cfg = RunConfig(model="msgnn", model_config={"n_subnets": 2, "m_blocks": 1, "channels": 8, "window_size": 10},
                        train_data="embedded:train", val_data="embedded:test", val_limit=1, crop=32, batch=2,
                        iterations=2 * DRY_ITERATIONS, val_every=0, log_every=1, checkpoint_every=1,
                        val_protocols=("msgnn-rgb",), exemplar="random", device="cpu", out_dir=str(out_dir))
        return cfg.to_dict()
    from derainkit.experiments.lab import profile_values

    gpu = profile_values("gpu")
    # the shipped run's recipe at the paper's 500 epochs, from its weights, with the gpu profile's data and
    # settings; checkpoint_every is not part of the run's identity, so it can be frequent here
    overrides = [f"train_data={gpu['train_data']}", f"val_data={gpu['test_data']}", f"device={gpu['device']}",
                 "epochs=500", f"init_weights={SHIPPED_WEIGHTS}", f"out_dir={out_dir}", "checkpoint_every=250"]
    overrides += [f"{k}={json.dumps(v)}" for k, v in (gpu.get("run_overrides") or {}).items()]
    return RunConfig.from_file(ROOT / SHIPPED_CONFIG).with_overrides(overrides).to_dict()


def train_worker(config_path: Path, seconds: float, max_iterations: int | None, result_path: Path) -> int:
    """Train (or resume) the run in ``config_path`` for about ``seconds``, in chunks sized from the measured
    time per iteration (each chunk ends with a checkpoint), and write what happened to ``result_path``."""
    from derainkit.fsutil import atomic_write_text
    from derainkit.train import RunConfig, train
    from derainkit.train.checkpoint import LATEST

    t_start = time.monotonic()
    deadline = t_start + seconds
    cfg = RunConfig.from_file(config_path)
    resume = (cfg.run_dir() / "checkpoints" / LATEST).is_file()
    status_file = cfg.run_dir() / "run.json"
    start = int(json.loads(status_file.read_text())["iteration"]) if resume and status_file.is_file() else 0
    at, done_here, chunks, result = start, 0, [], None
    chunk = min(max_iterations or 50, 50)  # a first short chunk measures the speed
    per_it = overhead = None
    while chunk >= 1:
        t0 = time.monotonic()
        result = train(cfg, resume=resume, max_iterations_this_call=chunk, progress=True)
        dt = time.monotonic() - t0
        n = result.iteration - at
        at, done_here, resume = result.iteration, done_here + n, True
        chunks.append({"iterations": n, "seconds": round(dt, 2), "to": result.iteration})
        if result.finished or (max_iterations and done_here >= max_iterations) or n < 1:
            break
        per_it, overhead = _speed(chunks)
        left = deadline - time.monotonic()
        chunk = int((0.9 * left - overhead) / per_it)
        if max_iterations:
            chunk = min(chunk, max_iterations - done_here)
    report = {"run_dir": str(result.run_dir) if result else None, "config_hash": cfg.config_hash(),
              "resumed": start > 0, "start_iteration": start,
              "iteration": result.iteration if result else None,
              "total_iterations": result.total_iterations if result else None,
              "finished": bool(result and result.finished), "iterations_this_run": done_here, "chunks": chunks,
              "seconds_per_iteration": round(per_it, 4) if per_it else None,
              "seconds_per_call_overhead": round(overhead, 2) if overhead is not None else None,
              "metrics": result.metrics if result else {}, "precision": result.precision if result else None,
              "device": result.device if result else None, "seconds": round(time.monotonic() - t_start, 2)}
    atomic_write_text(result_path, json.dumps(report, indent=1, default=str) + "\n")
    return 0


def _speed(chunks: list[dict[str, Any]]) -> tuple[float, float]:
    """(seconds per iteration, seconds of set-up per train() call) from the chunks so far: a line through the
    last two chunks of different length; with one, all of its time counts as iterations (an over-estimate,
    so the next chunk ends early rather than late)."""
    last = chunks[-1]
    prev = next((c for c in reversed(chunks[:-1]) if c["iterations"] != last["iterations"]), None)
    if prev is not None:
        per_it = (last["seconds"] - prev["seconds"]) / (last["iterations"] - prev["iterations"])
        if per_it > 0:
            return per_it, max(0.0, last["seconds"] - per_it * last["iterations"])
    return last["seconds"] / max(1, last["iterations"]), 0.0


# ----------------------------------------------------------------------------------------- running
def run_command(cmd: list[str], timeout: float, log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own process group with output to ``log_path``; on timeout the group is killed."""
    from derainkit.fsutil import check_target

    log_path.parent.mkdir(parents=True, exist_ok=True)
    check_target(log_path)  # never write through a link
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group: pytest/bench and their children
            proc.wait()
            rc, status = None, "timeout"
    return {"status": status, "returncode": rc, "seconds": round(time.monotonic() - t0, 2), "log": str(log_path)}


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _data_env(dry_run: bool) -> dict[str, str]:
    """The environment for the subprocesses: the repo on PYTHONPATH; for the real run, the data root pointed at
    a local shared/data when the default one lacks rain100l (as ``make data-link`` would link it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if dry_run:
        # a dry run checks the pipeline, it measures nothing: one thread per process, since on a small shared
        # CPU a second OpenMP thread mostly spins (the tiny training step ran ~10x slower with two)
        env.setdefault("OMP_NUM_THREADS", "1")
    else:
        from derainkit.data.paths import data_root

        if not (data_root() / "rain100l").exists():
            for cand in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data"):
                if (cand / "rain100l").is_dir():
                    env["DERAINKIT_DATA"] = str(cand)
                    break
    return env


def _git_add_list(plan: Plan, results: list[dict[str, Any]]) -> list[str]:
    """The report, the step logs and the training step's config/result, and results/bench when a benchmark
    ran (the training run folder itself holds checkpoints and is git-ignored)."""
    gpu = plan.root / "gpu"
    paths = [plan.report_path, gpu / "logs"] + [p for p in (gpu / "train_config.json", gpu / "train_result.json")
                                               if p.is_file()]
    if any(r["name"].startswith("bench:") and r["status"] == "ok" for r in results):
        paths.append(plan.root / "bench" / "gpu")
    return [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths]


def execute(plan: Plan, progress: bool = True) -> dict[str, Any]:
    """Run the plan's steps in order within its budget; returns the report (also written to disk)."""
    import torch
    from tqdm.auto import tqdm

    from derainkit.fsutil import atomic_write_text
    from derainkit.provenance import provenance

    t0 = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() and not plan.dry_run else "cpu")
    logs = plan.root / "gpu" / "logs"
    env = _data_env(plan.dry_run)
    results: list[dict[str, Any]] = []
    bar = tqdm(plan.steps, desc="gpu-run" + (" (dry run)" if plan.dry_run else ""), unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step.name)
        left = plan.total_s - plan.reserve_s - (time.monotonic() - t0)
        # a step may use its share, never more than what is left; the train step takes all that is left
        timeout = left if step.name == "train" else min(step.budget_s, left)
        entry: dict[str, Any] = {"name": step.name, "what": step.what, "budget_s": round(step.budget_s, 1),
                                 "timeout_s": round(timeout, 1)}
        if timeout < 3:
            entry.update(status="skipped", seconds=0.0, detail="no time left in the budget")
        elif step.name == "train":
            entry.update(_train_step(plan, timeout, logs, env))
        else:
            entry["command"] = " ".join(step.command)
            entry.update(run_command(step.command, timeout, logs / f"{step.name.replace(':', '_')}.log", env))
        if entry["status"] != "ok":
            entry.setdefault("detail", _tail(Path(entry["log"])) if entry.get("log") else "")
            tqdm.write(f"{step.name}: {entry['status']} (log: {entry.get('log', '-')})")
        results.append(entry)
    bar.close()
    failed = [r["name"] for r in results if r["status"] != "ok"]
    report = {"dry_run": plan.dry_run, "budget_s": plan.total_s, "seconds": round(time.monotonic() - t0, 2),
              "status": "ok" if not failed else "failed", "failed_steps": failed, "device": provenance(device)["device"],
              "provenance": provenance(device), "root": str(plan.root), "steps": results,
              "cpu_only_bench_modules_not_run": [] if plan.dry_run else CPU_ONLY_BENCH}
    report["git_add"] = _git_add_list(plan, results)
    atomic_write_text(plan.report_path, json.dumps(report, indent=1, default=str) + "\n")
    return report


def _train_step(plan: Plan, timeout: float, logs: Path, env: dict[str, str]) -> dict[str, Any]:
    from derainkit.fsutil import atomic_write_text

    gpu = plan.root / "gpu"
    cfg = train_config(plan.dry_run, plan.root)
    config_path = gpu / "train_config.json"
    atomic_write_text(config_path, json.dumps(cfg, indent=1) + "\n")
    result_path = gpu / "train_result.json"
    result_path.unlink(missing_ok=True)
    # the worker aims to stop well before its timeout: interpreter start, CUDA init, the final checkpoint
    grace = 5.0 if plan.dry_run else min(60.0, 0.15 * timeout)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--train-worker", str(config_path),
           "--seconds", f"{max(1.0, timeout - grace):.1f}", "--result", str(result_path)]
    if plan.dry_run:
        cmd += ["--max-iterations", str(DRY_ITERATIONS)]
    out = run_command(cmd, timeout, logs / "train.log", env)
    out["command"] = " ".join(cmd)
    if result_path.is_file():
        out["train"] = json.loads(result_path.read_text())
        if out["status"] == "ok" and not out["train"].get("iterations_this_run"):
            out.update(status="failed", detail="no iteration was trained")
    elif out["status"] == "ok":
        out.update(status="failed", detail="the training worker wrote no result")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds for everything (default 600)")
    ap.add_argument("--dry-run", action="store_true", help="every step scaled down, on CPU, into --out")
    ap.add_argument("--out", type=Path, default=None,
                    help="root of the outputs (default: results/; a dry run: a new temp folder, never results/)")
    ap.add_argument("--no-train", action="store_true",
                    help="tests and benchmarks only, sharing the whole budget (no training data needed)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--train-worker", type=Path, help=argparse.SUPPRESS)  # internal: the training subprocess
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--max-iterations", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_worker:
        return train_worker(args.train_worker, args.seconds, args.max_iterations, args.result)
    if not args.budget > 0:
        print(f"--budget {args.budget}: must be > 0 seconds", file=sys.stderr)
        return 2
    results_dir = (ROOT / "results").resolve()
    if args.dry_run:
        root = (args.out or Path(tempfile.mkdtemp(prefix="gpu-run-dry-"))).resolve()
        if root == results_dir or root.is_relative_to(results_dir):
            print(f"--out {args.out}: a dry run never writes into results/; choose a scratch folder", file=sys.stderr)
            return 2
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: `make gpu-run` is for a GPU machine; `make gpu-run DRY=1` "
                  "(--dry-run) checks the whole run on this CPU", file=sys.stderr)
            return 2
        root = (args.out or results_dir).resolve()
    plan = make_plan(args.budget, args.dry_run, root, train=not args.no_train)
    report = execute(plan, progress=not args.no_progress)
    for r in report["steps"]:
        print(f"  {r['name']:<16} {r['status']:<8} {r['seconds']:>7.1f} s / {r['timeout_s']:.0f} s")
    print(f"report: {plan.report_path} ({report['seconds']:.0f} s of {plan.total_s:.0f} s, {report['status']})")
    if plan.dry_run:
        print(f"dry run: outputs in {root} (nothing to commit)")
    else:
        print("to commit:  git add " + " ".join(report["git_add"]))
        print("(results/gpu/train/ holds checkpoints: keep it on the machine, do not commit it)")
        run_dir = next((r.get("train", {}).get("run_dir") for r in report["steps"] if r["name"] == "train"), None)
        if run_dir:
            print(f"to score it against the shipped checkpoint (and ship it if better, APPLY=1): "
                  f"make ship-msgnn CANDIDATE={run_dir}")
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
