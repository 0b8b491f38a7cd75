"""Many workers, one store: claims, exactly-once records, plan, verify and the submitit executors."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from derainkit.experiments.claims import Claim, publish_once, read_claim
from derainkit.experiments.store import Store, spec_key

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- claims
def test_a_claim_is_exclusive_until_released(tmp_path):
    first = Claim.acquire(tmp_path / "k.claim")
    assert first is not None and read_claim(tmp_path / "k.claim")["owner"] == first.owner
    assert Claim.acquire(tmp_path / "k.claim") is None  # live: nobody else gets it
    first.release()
    assert not (tmp_path / "k.claim").exists()
    with Claim.acquire(tmp_path / "k.claim") as again:
        assert again is not None


def test_a_stale_claim_is_taken_over_and_the_loser_notices(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAINKIT_CLAIM_HEARTBEAT_S", "0.1")
    path = tmp_path / "k.claim"
    path.write_text(json.dumps({"owner": "dead-host:1:x"}))
    old = time.time() - 60
    os.utime(path, (old, old))
    taker = Claim.acquire(path, stale_after=30)
    assert taker is not None and read_claim(path)["owner"] == taker.owner
    taker.release()
    assert not list(tmp_path.glob("k.claim*"))  # the moved-aside stale claim is cleaned up too

    slow = Claim.acquire(path, stale_after=30)
    path.unlink()  # as if another worker had judged it stale and taken it
    Claim.acquire(path, stale_after=30)
    time.sleep(0.5)
    assert slow.lost


def test_a_heartbeat_keeps_a_long_claim_alive(tmp_path, monkeypatch):
    monkeypatch.setenv("DERAINKIT_CLAIM_HEARTBEAT_S", "0.1")
    with Claim.acquire(tmp_path / "k.claim"):
        time.sleep(0.6)
        assert read_claim(tmp_path / "k.claim")["age_s"] < 0.4
        assert Claim.acquire(tmp_path / "k.claim", stale_after=0.4) is None


def test_publish_once_keeps_the_first_copy(tmp_path):
    assert publish_once(tmp_path / "r.json", "first") is True
    assert publish_once(tmp_path / "r.json", "second") is False
    assert (tmp_path / "r.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary files left


# ---------------------------------------------------------------------------------------------- store, many writers
def _filler(root: str, counter: str, specs: list, mode: str, sleep: float) -> None:
    os.environ["DERAINKIT_STORE_MODE"] = mode
    os.environ["DERAINKIT_CLAIM_HEARTBEAT_S"] = "0.2"
    store = Store(root)
    store.poll_seconds = 0.1

    def compute(key: str) -> dict:
        fd = os.open(counter, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"{key}\n".encode())
        os.close(fd)
        time.sleep(sleep)
        return {"metrics": {"x": {"psnr": float(len(key))}}}

    for spec in specs:
        store.ensure(spec, compute)


@pytest.mark.parametrize("mode", ["run", "fill"])
def test_two_fillers_compute_every_record_once(tmp_path, mode, monkeypatch):
    for name in ("DERAINKIT_STORE_MODE", "DERAINKIT_CLAIM_HEARTBEAT_S"):  # _filler sets them in this process too
        monkeypatch.setenv(name, os.environ.get(name, "run" if name == "DERAINKIT_STORE_MODE" else "30"))
    specs = [{"kind": "toy", "i": i} for i in range(6)]
    counter = tmp_path / "computed.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_filler, args=(str(tmp_path / "runs"), str(counter), order, mode, 0.3))
             for order in (specs, specs[::-1])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = counter.read_text().split()
    if mode == "fill":  # a fill worker skips what the other holds, so the two may leave none uncomputed
        _filler(str(tmp_path / "runs"), str(counter), specs, "fill", 0)
        lines = counter.read_text().split()
    assert sorted(lines) == sorted(spec_key(s) for s in specs)  # each exactly once
    assert len(Store(tmp_path / "runs").records()) == 6
    assert not list((tmp_path / "runs").glob("*.claim*"))


def test_a_killed_workers_record_is_completed_by_another(tmp_path, monkeypatch):
    spec = {"kind": "toy", "i": 0}
    counter = tmp_path / "computed.txt"
    ctx = mp.get_context("spawn")
    victim = ctx.Process(target=_filler, args=(str(tmp_path / "runs"), str(counter), [spec], "run", 60))
    victim.start()
    deadline = time.time() + 30
    while not counter.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)  # mid-computation: its claim stays, its heartbeat stops
    victim.join()
    key = spec_key(spec)
    assert (tmp_path / "runs" / f"{key}.claim").exists() and Store(tmp_path / "runs").get(key) is None

    monkeypatch.setenv("DERAINKIT_CLAIM_STALE_S", "1")
    monkeypatch.setenv("DERAINKIT_STORE_MODE", "run")
    store = Store(tmp_path / "runs")
    store.poll_seconds = 0.1
    t0 = time.time()
    rec = store.ensure(spec, lambda k: {"metrics": {"taken_over": True}})
    assert rec["metrics"] == {"taken_over": True} and time.time() - t0 >= 0.5  # waited for the claim to go stale
    assert not (tmp_path / "runs" / f"{key}.claim").exists()


def test_plan_mode_computes_nothing_and_blocks_dependents(tmp_path, monkeypatch):
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("DERAINKIT_STORE_MODE", "plan")
    monkeypatch.setenv("DERAINKIT_STORE_LOG", str(log))
    store = Store(tmp_path / "runs")
    first = store.ensure({"kind": "a"}, lambda k: pytest.fail("computed in plan mode"))
    second = store.ensure({"kind": "b", "run": first["key"]}, lambda k: pytest.fail("computed"), after=[first])
    assert first["planned"] and second["planned"] and not (tmp_path / "runs").exists()
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(e["event"], e.get("after")) for e in events] == [("planned", None), ("blocked", [first["key"]])]


def _lab_filler(results: str, out: str) -> None:
    from derainkit.experiments import Lab
    from derainkit.experiments.lab import Profile

    os.environ["DERAINKIT_RESULTS"] = results
    lab = Lab(Profile(name="t", iterations=6, batch=1, crop=32, eval_limit=1, device="cpu", progress=False,
                      model_config={"n_subnets": 2, "m_blocks": 1, "channels": 4, "window_size": 6}))
    lab.store.poll_seconds = 0.2
    # two records of one training run (one model scored on two test-set sizes): the run folder is claimed too
    recs = [lab.train_eval(), lab.on(eval_limit=2).train_eval()]
    Path(out).write_text(json.dumps([r["key"] for r in recs]))


def test_a_failing_cell_is_a_one_line_notebook_error_with_its_parts(tmp_path):
    import nbformat

    from derainkit.errors import DerainkitError
    from derainkit.experiments.run_notebook import NotebookError, run

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise ValueError(f'bad x {x}')")]
    path, out = tmp_path / "fails.ipynb", tmp_path / "out" / "fails.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError) as info:
        run(path, out, {"x": 7}, tmp_path, progress=False)
    err = info.value
    assert isinstance(err, DerainkitError) and "\n" not in str(err)
    # cell 3 by execution count: papermill runs its injected-parameters cell after ours
    assert (err.cell, err.ename, err.evalue) == (3, "ValueError", "bad x 7")
    assert err.reason == f"{path}: cell 3 failed: ValueError: bad x 7"
    assert str(err) == f"{err.reason} (the executed copy is {out})" and out.is_file()


@pytest.mark.slow
def test_two_labs_on_one_store_train_each_run_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_lab_filler, args=(str(tmp_path / "results"), str(tmp_path / f"out{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    keys = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(2)]
    assert keys[0] == keys[1]
    runs = list((tmp_path / "results" / "t" / "train").glob("*/log.csv"))
    assert len(runs) == 1
    iterations = [line.split(",")[0] for line in runs[0].read_text().splitlines()[1:]]
    assert len(iterations) == len(set(iterations))  # no duplicate log rows from a second trainer
    store = Store(tmp_path / "results" / "t" / "runs")
    assert sorted(r["key"] for r in store.records()) == sorted(keys[0])
    assert sum(not r["run"].get("reused_weights") for r in store.records()) == 1  # trained once


# ---------------------------------------------------------------------------------------------- items, plan, fill
def test_items_match_the_makefile():
    from derainkit.experiments.plan import ITEMS

    text = (REPO / "Makefile").read_text()
    assert dict(re.findall(r"^NB_(\S+) := (\S+)$", text, re.M)) == ITEMS
    assert re.search(r"^ITEMS := (.*)$", text, re.M).group(1).split() == list(ITEMS)


def _tables(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*")) if p.suffix in (".csv", ".md", ".png")}


@pytest.mark.slow
def test_plan_lists_what_fill_computes_and_executors_agree(tmp_path, monkeypatch):
    """protocol-gap (no training: seconds) into empty stores: the plan names exactly the records the local
    executor then computes; submitit's local executor (two worker processes) makes byte-identical tables."""
    from derainkit.experiments.fill import run_fill
    from derainkit.experiments.plan import plan

    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("DERAINKIT_RESULTS", str(a))
    entries, walks = plan(["protocol-gap"], "smoke", progress=False)
    assert entries and not any(w.error for w in walks)
    assert not (a / "smoke").exists() or not _tables(a / "smoke")  # a plan writes no table
    report = run_fill(["protocol-gap"], "smoke")
    assert sorted(report["computed"]) == sorted(e.key for e in entries) and not report["twice"]
    assert plan(["protocol-gap"], "smoke", progress=False)[0] == []  # nothing left

    monkeypatch.setenv("DERAINKIT_RESULTS", str(b))
    report = run_fill(["protocol-gap"], "smoke", executor="submitit", cluster="local", workers=2, logs=tmp_path / "logs")
    assert sorted(report["computed"]) == sorted(e.key for e in entries) and not report["twice"]
    assert report["jobs"] == 2 and list((tmp_path / "logs").glob("*_log.out"))
    assert _tables(a / "smoke") and _tables(a / "smoke") == _tables(b / "smoke")


def test_per_record_jobs_through_submitits_debug_executor(tmp_path, monkeypatch):
    from derainkit.experiments import fill

    calls = []
    monkeypatch.setattr(fill, "fill_worker", lambda *a, **k: calls.append(a) or {"computed": list(a[3] or [])})
    monkeypatch.setattr(fill, "plan", lambda *a, **k: ([type("E", (), {"key": "k1", "items": ["table5"]})(),
                                                        type("E", (), {"key": "k2", "items": ["table2"]})()], []))
    report = fill.run_fill(["table2", "table5"], "smoke", executor="submitit", cluster="debug", per_record=True,
                           logs=tmp_path / "logs", render=False)
    assert [c[3] for c in calls] == [["k1"], ["k2"], None]  # one job per record, then one for what they unlock
    assert report["computed"] == ["k1", "k2"] and report["jobs"] == 3


def test_cluster_settings_come_from_the_profile_then_flags(tmp_path, monkeypatch):
    from derainkit.errors import ConfigError
    from derainkit.experiments import fill, lab

    monkeypatch.setattr(lab, "profile_values", lambda name: {"cluster": {"partition": "gpu", "time_min": 240}})
    assert fill.cluster_settings("x", {"time_min": 30, "gpus": None}) == {"partition": "gpu", "time_min": 30}
    monkeypatch.setattr(lab, "profile_values", lambda name: {"cluster": {"partiton": "gpu"}})
    with pytest.raises(ConfigError, match="partiton"):
        fill.cluster_settings("x", {})


# ---------------------------------------------------------------------------------------------- estimates
def _record(config: dict, seconds: float, iterations: int = 600, crop: int = 64) -> dict:
    run = {"model": "msgnn", "model_config": config, "iterations": iterations, "batch": 8, "crop": crop}
    return {"spec": {"kind": "train_eval", "run": run}, "wall_seconds": seconds}


def test_estimates_scale_the_work_and_a_measured_step_ratio_for_a_config_no_record_has():
    from derainkit.experiments.plan import estimate_seconds

    base, other = {"patch_size": 3}, {"patch_size": 5}
    records = [_record(base, 1000.0), _record(base, 1200.0), _record(other, 3000.0), _record({"k": 7}, 99.0)]
    # the same config: its records' median, scaled by iterations × batch × crop²
    est, note = estimate_seconds(_record(base, 0, iterations=300)["spec"], records)
    assert (est, note) == (550.0, "")
    assert estimate_seconds(_record(other, 0, crop=32)["spec"], records) == (750.0, "")
    # a config nobody ran: the most common stored config's records, flagged without a step cost...
    wanted = _record({"patch_size": 7}, 0)["spec"]
    assert estimate_seconds(wanted, records) == (1100.0, ", another model size: scale by its cost")
    # ...or times the two configs' measured step ratio, both timed at the wanted batch and crop
    timed = []

    def cost(run):
        timed.append(run)
        return {3: 2.0, 7: 5.0}[run["model_config"]["patch_size"]]

    est, note = estimate_seconds(wanted, records, cost)
    assert est == 2750.0 and "× 2.50" in note
    assert [r["model_config"] for r in timed] == [{"patch_size": 7}, base] and {r["crop"] for r in timed} == {64}
    assert estimate_seconds(wanted, records, lambda run: None)[0] == 1100.0  # not timable: unscaled, flagged
    assert estimate_seconds(wanted, [])[0] is None


def test_a_training_step_is_timed_with_the_runs_own_task_and_each_config_once(monkeypatch):
    from derainkit.errors import ConfigError
    from derainkit.experiments import plan as plan_mod
    from derainkit.train import step_time

    run = {"model": "msgnn", "model_config": {"n_subnets": 1, "m_blocks": 1, "channels": 8}, "iterations": 600,
           "batch": 2, "crop": 32, "exemplar": "official", "lr": 5e-4, "loss": "ssim"}
    cfg = step_time.timing_config(run)
    assert (cfg.train_data, cfg.val_data, cfg.exemplar, cfg.crop, cfg.batch) == ("embedded:train", None, "random", 32, 2)
    seconds = step_time.time_training_step(run, steps=1)
    assert 0 < seconds < 600
    with pytest.raises(ConfigError, match="cannot be timed"):
        step_time.timing_config({"model": "nlcl", "iterations": 10, "batch": 1, "crop": 64})
    with pytest.raises(ConfigError, match="steps"):
        step_time.time_training_step(run, steps=0)

    calls = []
    monkeypatch.setattr(step_time, "time_training_step", lambda r, steps, device: calls.append(r) or 1.5)
    cost = plan_mod.measured_step_cost()
    assert cost(run) == cost(dict(run, seed=67, exemplar="random")) == 1.5 and len(calls) == 1  # once per config
    assert cost(dict(run, exemplar="none")) == 1.5 and len(calls) == 2
    monkeypatch.setattr(step_time, "time_training_step", lambda r, steps, device: (_ for _ in ()).throw(ConfigError("x")))
    assert plan_mod.measured_step_cost()(run) is None


# ---------------------------------------------------------------------------------------------- verify
def test_compare_values_verdicts():
    from derainkit.experiments.verify import compare_values

    assert compare_values(30.5, 30.5) == "identical"
    assert compare_values(30.50001, 30.5) == "within tolerance"
    assert compare_values(30.6, 30.5) == "differs"
    assert compare_values("a", "b") == "differs" and compare_values(None, 1.0) == "differs"


@pytest.mark.slow
def test_verify_reproduces_the_committed_smoke_records_and_catches_a_tampered_one(tmp_path):
    """The committed smoke protocol-gap records recompute on this machine; a changed committed value fails,
    naming the record and the number."""
    from derainkit.experiments.verify import verify

    pytest.importorskip("papermill")
    scratch = tmp_path / "scratch"
    report = verify(["protocol-gap"], "smoke", scratch=scratch, progress=False)
    assert report.ok, report.summary()
    assert len(report.record_verdicts()) >= 2  # the input, the shipped MSGNN (and PReNet with ../shared)

    committed = tmp_path / "committed" / "smoke" / "runs"
    committed.mkdir(parents=True)
    keys = list(report.record_verdicts())
    for key in keys:
        shutil.copy(REPO / "results" / "smoke" / "runs" / f"{key}.json", committed)
    victim = committed / f"{keys[0]}.json"
    rec = json.loads(victim.read_text())
    proto = sorted(rec["metrics"])[0]
    rec["metrics"][proto]["psnr"] += 0.01
    victim.write_text(json.dumps(rec))
    bad = verify(["protocol-gap"], "smoke", results_dir=tmp_path / "committed", scratch=scratch, progress=False)
    assert not bad.ok and f"{keys[0]} (differs)" in bad.summary()
    assert any(r["record"] == keys[0] and r["number"] == f"metrics.{proto}.psnr" and r["verdict"] == "differs"
               for r in bad.rows)


def test_a_derained_image_whose_runs_weights_are_absent_is_estimated_with_its_retraining(tmp_path, monkeypatch):
    """A fresh clone has the smoke store's records but no training folders: Figure 8's images, once their
    records are gone, each need their run retrained first, and the plan counts that from the run's record."""
    from derainkit.experiments.lab import trained_weights_path
    from derainkit.experiments.plan import plan, retrain_seconds

    shutil.copytree(REPO / "results" / "smoke" / "runs", tmp_path / "smoke" / "runs")
    store = Store(tmp_path / "smoke" / "runs")
    records = {r["key"]: r for r in store.records()}
    images = [r for r in records.values() if (r.get("spec") or {}).get("kind") == "derain_image"]
    for r in images:
        (tmp_path / "smoke" / "runs" / f"{r['key']}.json").unlink()
    monkeypatch.setenv("DERAINKIT_RESULTS", str(tmp_path))
    entries, walks = plan(["fig8"], "smoke", progress=False)
    assert not any(w.error for w in walks)
    derains = [e for e in entries if e.kind == "derain_image"]
    assert len(derains) == 3  # (their keys hold the image's digest: which photo a machine has may differ)
    assert [e.kind for e in entries] == ["derain_image"] * 3  # the runs themselves are stored
    for e in derains:
        run = records[e.spec["run"]]
        info = run.get("run") or {}  # older records lack the per-iteration time: their whole wall time
        train_s = info["train_seconds_per_iteration"] * info["iterations"] if "train_seconds_per_iteration" in info \
            else run["wall_seconds"]
        assert f"retraining {run['key']}" in e.estimate_from and e.estimate_s >= train_s

    # with the weights on this machine there is nothing to retrain
    run = records[derains[0].spec["run"]]
    assert retrain_seconds(derains[0].spec, list(records.values()), tmp_path / "smoke")[0] == run["key"]
    weights = trained_weights_path(run, tmp_path / "smoke")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert retrain_seconds(derains[0].spec, list(records.values()), tmp_path / "smoke") is None
    assert retrain_seconds(run["spec"], list(records.values()), tmp_path / "smoke") is None  # not an image


def test_budget_per_item_counts_a_shared_record_once_under_its_first_item():
    from derainkit.experiments.plan import PlanEntry, Walk, item_budget, plan_markdown

    def ev(event, key):
        return {"event": event, "key": key, "kind": "train_eval", "spec": {}}

    walks = [Walk("table4", [ev("reused", "ref"), ev("reused", "l5"), ev("planned", "l7")]),
             Walk("table5", [ev("reused", "ref"), ev("reused", "k3"), ev("planned", "l7"), ev("planned", "k9")])]
    entries = [PlanEntry("l7", "train_eval", ["table4", "table5"], "l = 7", "missing", 3600.0, "cpu records", {}),
               PlanEntry("k9", "train_eval", ["table5"], "k = 9", "missing", None, "", {})]
    seconds = {"ref": 600.0, "l5": 1200.0, "k3": 900.0}
    t4, t5 = item_budget(entries, walks, seconds)
    assert (t4["stored"], t4["shared"], t4["measured_s"], t4["missing"], t4["estimate_s"]) == (2, 0, 1800.0, 1, 3600.0)
    assert (t5["stored"], t5["shared"], t5["measured_s"], t5["missing"], t5["estimate_s"], t5["unknown"]) == \
        (1, 1, 900.0, 1, 0.0, 1)
    md = plan_markdown(entries, walks, "cpu", seconds)
    assert "| table4 | 2 (+ 0) | 30 min | 1 | 60 min |" in md and "| table5 | 1 (+ 1) | 15 min | 1 | 0 s (+ 1 unknown) |" in md
    assert "| all | 3 | 45 min | 2 | 60 min |" in md
    assert "Budget per item" not in plan_markdown(entries, walks, "cpu")  # no store given: the plan alone


def test_calibration_says_when_the_machine_is_busy(monkeypatch):
    from derainkit.experiments import plan as plan_mod

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.2, 3.0, 2.0))
    assert plan_mod.busy_load() == pytest.approx(4.2)  # a training job on both cores, and the timing itself
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 1.0, 1.0))
    assert plan_mod.busy_load() is None  # the timing's own two threads
