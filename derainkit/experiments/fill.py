"""Fill the results store with many workers (local processes or Slurm jobs via submitit), then render.

    python -m derainkit.experiments.fill plan   --profile cpu [--items table2,table5]
    python -m derainkit.experiments.fill run    --profile cpu --executor submitit --cluster slurm --workers 8 \\
        --partition gpu --gpus 1 --time-min 240 --mem-gb 32
    python -m derainkit.experiments.fill verify --profile smoke [--items protocol-gap]

A *worker* walks the items' notebooks with the store in ``fill`` mode: each record it needs that is
missing and not claimed by a live worker, it claims and computes; records claimed by others it skips.
It walks again while that makes progress (records whose specs depend on other records become known),
waits while other workers still hold claims, and stops when every record is stored. Workers share
nothing but the store folder, so any number of them, on any hosts that see the folder, fill it
without training anything twice; a worker that dies leaves a claim whose heartbeat stops, and
another takes it over and resumes the training from its checkpoint. When the workers are done, the
notebooks run once more in the usual way: every record is stored, so they only render.

Executors: ``local`` (one worker in this process: today's ``make reproduce-tables``, in walks) and
``submitit`` (``--cluster slurm`` on a cluster; ``local`` runs the same jobs as local processes and
``debug`` in this process, which is how CI tests the path). ``--per-record`` submits one job per
planned record (a job array) instead of ``--workers`` identical workers. Slurm settings come from
flags or the profile file's ``cluster:`` section.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from derainkit.errors import ConfigError, DerainkitError, OneLineParser
from derainkit.experiments.plan import (ITEMS, REPO, all_records, measured_step_cost, plan, plan_markdown, resolve_items,
                                        scoped_environ, walk)

SLURM_KEYS = ("partition", "gpus", "cpus", "time_min", "mem_gb", "array_parallelism", "account", "qos")


def fill_worker(items: Sequence[str], profile: str, pairs: Sequence[tuple[str, str]] = (),
                only: Sequence[str] | None = None, results_dir: str | None = None, poll_s: float = 10.0,
                max_rounds: int = 100) -> dict[str, Any]:
    """Walk ``items`` in fill mode until every record they need (or every one in ``only``) is stored;
    returns the keys this worker computed and how many walks it took."""
    computed: list[str] = []
    for rounds in range(1, max_rounds + 1):
        walks = [walk(item, profile, "fill", pairs, only, results_dir) for item in items]
        new = [k for w in walks for k in w.keys("computed")]
        computed += new
        missing = {k for w in walks for k in w.missing}
        if only:
            missing &= set(only)
        claimed = {k for w in walks for k in w.keys("claimed")} & missing
        errors = [w for w in walks if w.error]
        if not missing and (only or not errors):
            return {"computed": computed, "walks": rounds}
        if new:
            continue  # progress: walk again (records that depend on the new ones can now be named)
        if claimed:
            time.sleep(poll_s)  # other workers hold them; a dead worker's claim goes stale and is taken over
            continue
        why = "; ".join(f"{w.item}: {w.error}" for w in errors) or f"records {sorted(missing)} cannot be computed"
        raise DerainkitError(f"fill made no progress: {why}")
    raise DerainkitError(f"fill: still records missing after {max_rounds} walks")


class FillJob:
    """A picklable worker for submitit; on a Slurm timeout or preemption it asks to be requeued (the
    training resumes from its checkpoint once the dead job's claim has gone stale)."""

    def __init__(self, items: Sequence[str], profile: str, pairs: Sequence[tuple[str, str]] = (),
                 only: Sequence[str] | None = None, results_dir: str | None = None) -> None:
        self.args = (list(items), profile, list(pairs), list(only) if only else None, results_dir)

    def __call__(self) -> dict[str, Any]:
        import socket

        out = fill_worker(*self.args)
        return {**out, "host": socket.gethostname()}

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(FillJob(*self.args))


def cluster_settings(profile: str, flags: dict[str, Any]) -> dict[str, Any]:
    """The profile file's ``cluster:`` section, then the command's flags (those given)."""
    from derainkit.experiments.lab import profile_values

    section = dict(profile_values(profile).get("cluster") or {})
    unknown = sorted(set(section) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(f"profile {profile}: unknown cluster setting(s) {unknown}; known: {list(SLURM_KEYS)}")
    section.update({k: v for k, v in flags.items() if v is not None})
    return section


def _executor(cluster: str, logs: Path, settings: dict[str, Any]):
    try:
        import submitit
    except ImportError:
        raise DerainkitError("--executor submitit needs submitit: pip install 'derainkit[cluster]'") from None
    ex = submitit.AutoExecutor(folder=str(logs), cluster=cluster)
    params: dict[str, Any] = {"name": "derainkit-fill", "timeout_min": int(settings.get("time_min") or 60),
                              "mem_gb": settings.get("mem_gb"), "gpus_per_node": settings.get("gpus"),
                              "cpus_per_task": settings.get("cpus")}
    if cluster == "slurm":
        params.update(slurm_partition=settings.get("partition"), slurm_array_parallelism=settings.get("array_parallelism"),
                      slurm_account=settings.get("account"), slurm_qos=settings.get("qos"))
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _run_jobs(ex, jobs: Sequence[FillJob], cluster: str) -> list[dict[str, Any]]:
    """Submit ``jobs`` (as one job array where the executor has them) and wait for their results."""
    if cluster != "debug" and len(jobs) > 1:
        with ex.batch():
            submitted = [ex.submit(job) for job in jobs]
    else:
        submitted = [ex.submit(job) for job in jobs]
    return [j.result() for j in submitted]


def run_fill(items: Sequence[str], profile: str, pairs: Sequence[tuple[str, str]] = (), executor: str = "local",
             cluster: str = "slurm", workers: int = 1, per_record: bool = False, logs: str | Path | None = None,
             settings: dict[str, Any] | None = None, results_dir: str | None = None, render: bool = True
             ) -> dict[str, Any]:
    """Compute every missing record of ``items`` with the chosen executor, then render the notebooks."""
    from derainkit.experiments.plan import notebook_parameters
    from derainkit.experiments.run_notebook import record_counts, run

    items = resolve_items(items)
    if executor == "local":
        jobs_out = [fill_worker(items, profile, pairs, results_dir=results_dir)]
    elif executor == "submitit":
        logs = Path(logs or REPO / "results" / profile / "fill_logs")
        ex = _executor(cluster, logs, settings or {})
        if per_record:
            entries, _ = plan(items, profile, pairs, results_dir, progress=False)
            todo = [FillJob(e.items, profile, pairs, [e.key], results_dir) for e in entries]
            todo.append(FillJob(items, profile, pairs, None, results_dir))  # then whatever those made nameable
        else:
            todo = [FillJob(items, profile, pairs, None, results_dir) for _ in range(max(1, workers))]
        # per record: the records' jobs first, then one for the records they make nameable
        waves = [todo[:-1], todo[-1:]] if per_record else [todo]
        jobs_out = [out for wave in waves for out in _run_jobs(ex, wave, cluster)]
    else:
        raise ConfigError(f"--executor {executor!r}: choose local or submitit")
    computed = [k for out in jobs_out for k in out["computed"]]
    report = {"computed": computed, "jobs": len(jobs_out), "twice": sorted({k for k in computed if computed.count(k) > 1})}
    if render:
        for item in items:
            nb = REPO / "notebooks" / f"{ITEMS[item]}.ipynb"
            with record_counts() as counts, scoped_environ(DERAINKIT_STORE_MODE=None, DERAINKIT_STORE_ONLY=None):
                run(nb, Path(results_dir or REPO / "results") / profile / "notebooks" / nb.name,
                    notebook_parameters(item, profile, pairs, results_dir), REPO / "notebooks", progress=False)
                print(f"{item}: rendered ({counts()})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m derainkit.experiments.fill", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verb", choices=("plan", "run", "verify"))
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--items", default="", help=f"comma-separated, default all: {', '.join(ITEMS)}")
    ap.add_argument("-p", dest="pairs", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter (value read as YAML); repeatable")
    ap.add_argument("--out", type=Path, help="plan: also write the table here (.md); verify: the report (.csv)")
    ap.add_argument("--calibrate", action="store_true",
                    help="plan: time a few training steps of each model config no record has (and of the stored one) "
                         "on this machine, and scale its estimate by their ratio")
    ap.add_argument("--executor", choices=("local", "submitit"), default="local")
    ap.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                    help="submitit's executor: slurm, or local processes / this process for a trial")
    ap.add_argument("--workers", type=int, default=1, help="identical fill workers (jobs)")
    ap.add_argument("--per-record", action="store_true", help="one job per planned record instead of --workers")
    ap.add_argument("--logs", type=Path, help="submitit's job folder (logs per job)")
    for key in SLURM_KEYS:
        ap.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, type=str if key in
                        ("partition", "account", "qos") else int)
    args = ap.parse_args(argv)
    try:
        items = resolve_items(args.items)
        pairs = [tuple(p) for p in args.pairs]
        if args.verb == "plan":
            entries, walks = plan(items, args.profile, pairs, step_cost=measured_step_cost() if args.calibrate else None)
            results_dir = Path(os.environ.get("DERAINKIT_RESULTS") or REPO / "results")
            stored = all_records(results_dir).get(args.profile, [])
            text = plan_markdown(entries, walks, args.profile,
                                 {r["key"]: float(r.get("wall_seconds") or 0.0) for r in stored if r.get("key")})
            print(text, end="")
            if args.out:
                from derainkit.fsutil import atomic_write_text
                from derainkit.provenance import device_name, git_commit, now_iso

                load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
                head = (f"<!-- made by `make plan PROFILE={args.profile}{' CALIBRATE=1' if args.calibrate else ''}` at "
                        f"commit {git_commit()}, {now_iso()}, on {device_name('cpu')}, 1-min load {load} at the end "
                        "(step timings and so estimates move with the machine's load) -->\n")
                atomic_write_text(args.out, head + text)
        elif args.verb == "verify":
            from derainkit.experiments.verify import verify

            report = verify(items, args.profile, pairs, out=args.out)
            print(report.summary())
            return 0 if report.ok else 1
        else:
            settings = cluster_settings(args.profile, {k: getattr(args, k) for k in SLURM_KEYS})
            report = run_fill(items, args.profile, pairs, args.executor, args.cluster, args.workers, args.per_record,
                              args.logs, settings)
            print(f"fill {args.profile}: computed {len(report['computed'])} records in {report['jobs']} job(s)"
                  + (f"; computed twice: {report['twice']}" if report["twice"] else ""))
    except DerainkitError as exc:
        print(f"derainkit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
