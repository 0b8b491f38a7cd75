#!/usr/bin/env python3
"""`make gpu-run` on a lent GPU machine that can install nothing and receives at most ~64 MiB per call.

Such a machine (a sandboxed accelerator reached through a remote-run tool) has PyTorch and the kit's
dependencies but no network, gets the repository's tracked files plus a carried folder with each command,
keeps what a command wrote only while it stays warm between calls, and returns a few small files. The real
data (RainTrainL, 108 MB, and the Rain100L pairs the training validates on) does not fit one call, so it
travels in parts, each staged into a folder on the machine and checked against its sha256, and the last
call runs the GPU run there and packs what it made:

    here:    python scripts/device_run.py prepare                 # the plan: how many parts, their sizes
             python scripts/device_run.py prepare --part 1        # .devcarry/ = part 1 (clears the last part)
    device:  python3 scripts/device_run.py stage                  # carry [".devcarry"]; part 1 -> ~/derainkit-device
             ... prepare --part K / stage, for every part but the last ...
    device:  python3 scripts/device_run.py go --budget 480        # stages the last part, checks every part is
                                                                  # there, runs scripts/gpu_run.py on that data,
                                                                  # packs $OUT/gpu_run.tar.gz (+ latest.pt)
    here:    python scripts/device_run.py unpack <files_at>       # results/gpu/, results/bench/gpu/ and the
                                                                  # training run's checkpoint, for the next time

When only one call is possible (a lease too short for the parts, or a machine that went back between
them), one call still measures what only the GPU can show, with nothing carried:

    device:  python3 scripts/device_run.py go --no-train --budget 480   # CUDA tests + GPU benchmarks, packed

Send the calls back to back: a machine that goes back between two calls (here, 30 s after a call ends) loses
what was staged, and ``go`` then says which parts are missing instead of running on part of the data.

The training run of ``make gpu-run`` (the shipped MSGNN continued at 500 epochs) resumes across leases: its
checkpoint comes back with ``unpack`` into results/gpu/train/ (git-ignored: keep it on this machine) and
``prepare`` carries it out again with the last part. ``--dry-run`` on ``go`` runs gpu_run's dry run instead
(CPU, toy sizes), which is how the tests check the whole path here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # gpu_run, the run this script carries to the machine

CARRY = ROOT / ".devcarry"           # git-ignored; the folder each device call carries
CALL_LIMIT = 64 << 20                # what one call may carry: tracked files + .devcarry
MARGIN = 4 << 20
DEFAULT_HOME = Path(os.environ.get("DERAINKIT_DEVICE_HOME", Path.home() / "derainkit-device"))


def _sha256(path: Path) -> str:
    from derainkit.data import file_sha256

    return file_sha256(path)


def tracked_bytes(repo: Path = ROOT) -> int:
    """Bytes of the files git tracks (they travel with every call)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    return sum((repo / p).stat().st_size for p in out.decode().split("\0") if p and (repo / p).is_file())


def gpu_run_dir(results: Path, dry_run: bool = False) -> Path:
    """The folder of ``make gpu-run``'s training run under a results root (its config hash names it)."""
    import gpu_run
    from derainkit.train import RunConfig

    return RunConfig.from_dict(gpu_run.train_config(dry_run, results)).run_dir()


def data_files(shared_data: Path) -> list[tuple[str, Path]]:
    """(path under the data root, file): all of RainTrainL and the Rain100L test pairs the run validates on."""
    import gpu_run
    from derainkit.data import discover_pairs

    train, test = shared_data / "rain100l" / "train", shared_data / "rain100l" / "test"
    if not train.is_dir() or not test.is_dir():
        raise SystemExit(f"{shared_data}: no rain100l/train and rain100l/test there; pass --shared-data DIR "
                         "(a folder laid out as ../shared/data)")
    files = [(str(p.relative_to(shared_data)), p) for p in sorted(train.rglob("*")) if p.is_file()]
    val_limit = int(gpu_run.train_config(False, ROOT / "results").get("val_limit") or 0)
    pairs = discover_pairs(test)
    for pair in pairs[:val_limit] if val_limit else pairs:  # what the training validates on, nothing more
        for p in (pair.rainy, pair.clean):
            files.append((str(Path(p).relative_to(shared_data)), Path(p)))
    return files


def run_files(results: Path) -> list[tuple[str, Path]]:
    """(path under the results root, file) of the training run to resume, if this machine has one."""
    run = gpu_run_dir(results)
    if not (run / "checkpoints" / "latest.pt").is_file():
        return []
    keep = [p for p in sorted(run.iterdir()) if p.is_file()] + [run / "checkpoints" / "latest.pt"]
    return [(str(p.relative_to(results)), p) for p in keep]


def split(files: list[tuple[str, Path]], budget: int) -> list[list[tuple[str, Path]]]:
    """Consecutive parts of at most ``budget`` bytes each (a larger single file is refused)."""
    parts: list[list[tuple[str, Path]]] = [[]]
    size = 0
    for rel, path in files:
        n = path.stat().st_size
        if n > budget:
            raise SystemExit(f"{path}: {n} bytes, more than one call can carry ({budget})")
        if size + n > budget and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append((rel, path))
        size += n
    return parts


def plan(shared_data: Path, results: Path, budget: int) -> dict[str, Any]:
    data = split(data_files(shared_data), budget)
    run = run_files(results)
    run_size = sum(p.stat().st_size for _, p in run)
    last = sum(p.stat().st_size for _, p in data[-1])
    if run and last + run_size > budget:  # the run travels with the last part, or alone after it
        data.append([])
    listing = [{"path": rel, "size": p.stat().st_size} for part in data for rel, p in part]
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    return {"parts": data, "run": run, "id": digest}


def prepare(shared_data: Path, results: Path, part: int | None, budget: int, carry: Path = CARRY) -> dict[str, Any]:
    """Print the plan; with ``part``, lay that part into ``carry`` (replacing what was there)."""
    p = plan(shared_data, results, budget)
    n = len(p["parts"])
    if part is None:
        for k, files in enumerate(p["parts"], 1):
            extra = f" + training run ({len(p['run'])} files)" if p["run"] and k == n else ""
            mb = sum(f.stat().st_size for _, f in files) / 2**20
            print(f"part {k}/{n}: {len(files)} data files, {mb:.1f} MiB{extra}")
        return p
    if not 1 <= part <= n:
        raise SystemExit(f"--part {part}: the plan has parts 1..{n}")
    if carry.exists():
        shutil.rmtree(carry)
    entries = []
    for rel, src in p["parts"][part - 1]:
        dst = carry / "data" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        entries.append({"kind": "data", "path": rel, "sha256": _sha256(dst)})
    for rel, src in (p["run"] if part == n else []):
        dst = carry / "results" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        entries.append({"kind": "results", "path": rel, "sha256": _sha256(dst)})
    (carry / "part.json").write_text(json.dumps({"id": p["id"], "part": part, "of": n, "files": entries}, indent=1))
    print(f"{carry}: part {part}/{n}, {len(entries)} files")
    return p


def stage(home: Path, carry: Path = CARRY) -> dict[str, Any]:
    """Copy the carried part into ``home`` after checking every file's digest; returns the part's header."""
    if not (carry / "part.json").is_file():
        raise SystemExit(f"{carry / 'part.json'}: not here; run `prepare --part K` on the machine with the data and "
                         "carry .devcarry with this call")
    head = json.loads((carry / "part.json").read_text())
    for e in head["files"]:
        src = carry / e["kind"] / e["path"]
        if _sha256(src) != e["sha256"]:
            raise SystemExit(f"{src}: damaged in transit (sha256 differs); prepare and send part {head['part']} again")
        dst = home / e["kind"] / e["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    done = home / "staged" / f"{head['id']}-{head['part']}.json"
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(head))
    have = sorted(int(p.stem.rsplit("-", 1)[1]) for p in done.parent.glob(f"{head['id']}-*.json"))
    print(f"staged part {head['part']}/{head['of']} into {home}; parts here: {have}")
    return head


def pack(results: Path, out: Path, dry_run: bool = False) -> list[Path]:
    """$OUT/gpu_run.tar.gz (report, logs, benchmarks, the run's small files) and the run's checkpoint beside it."""
    out.mkdir(parents=True, exist_ok=True)
    members = [results / "gpu" / n for n in ("gpu_run.json", "logs", "train_config.json", "train_result.json")]
    members.append(results / "bench" / "gpu")
    run = gpu_run_dir(results, dry_run)
    members += [p for p in sorted(run.iterdir()) if p.is_file()] if run.is_dir() else []
    tar_path = out / "gpu_run.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for m in members:
            if m.exists():
                tar.add(m, arcname=str(m.relative_to(results)))
    written = [tar_path]
    ckpt = run / "checkpoints" / "latest.pt"
    if ckpt.is_file():
        written.append(Path(shutil.copyfile(ckpt, out / "latest.pt")))
    return written


def go(home: Path, budget: float, dry_run: bool, out: Path, carry: Path = CARRY, train: bool = True) -> int:
    """Stage the carried part, check that every part is staged, run the GPU run on that data, pack the results.
    Without ``train``: the tests and benchmarks only, which need no data, so nothing is staged or checked."""
    if train:
        head = stage(home, carry)
        have = {int(p.stem.rsplit("-", 1)[1]) for p in (home / "staged").glob(f"{head['id']}-*.json")}
        missing = sorted(set(range(1, head["of"] + 1)) - have)
        if missing:
            raise SystemExit(f"parts {missing} of {head['of']} are not staged in {home} (the machine went back "
                             "between calls?): send them with `stage` first, or run `go --no-train` (no data needed)")
    results = home / "results"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if train:
        env["DERAINKIT_DATA"] = str(home / "data")
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_run.py"), "--budget", str(budget), "--out", str(results),
           "--no-progress"] + (["--dry-run"] if dry_run else []) + ([] if train else ["--no-train"])
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    for path in pack(results, out, dry_run):
        print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return rc


def unpack(folder: Path, results: Path = ROOT / "results") -> list[str]:
    """Extract what ``go`` packed into ``results`` and put the checkpoint back into its run; the paths to commit."""
    tar_path = folder / "gpu_run.tar.gz"
    if not tar_path.is_file():
        raise SystemExit(f"{folder}: no gpu_run.tar.gz (the files a `go` call left under $OUT)")
    with tarfile.open(tar_path) as tar:
        tar.extractall(results, filter="data")  # refuses absolute paths, '..' and links out of the folder
    report = json.loads((results / "gpu" / "gpu_run.json").read_text())
    run = gpu_run_dir(results, bool(report.get("dry_run")))
    if (folder / "latest.pt").is_file():
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "latest.pt", run / "checkpoints" / "latest.pt")
    commit = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
              for p in (results / "gpu" / "gpu_run.json", results / "gpu" / "logs", results / "bench" / "gpu")
              if p.exists()]
    print("to commit: git add " + " ".join(commit))
    print(f"the training run (checkpoint, not committed) is in {run}: the next `prepare` carries it out again")
    return commit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: the plan, or one part into .devcarry/")
    p.add_argument("--part", type=int, default=None)
    p.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--budget-mib", type=float, default=None, help="bytes a part may hold (default: what a call "
                   "can carry beside the tracked files, less a margin)")
    s = sub.add_parser("stage", help="device: copy the carried part into the staging folder")
    s.add_argument("--home", type=Path, default=DEFAULT_HOME)
    g = sub.add_parser("go", help="device: stage the last part, run the GPU run, pack into $OUT")
    g.add_argument("--home", type=Path, default=DEFAULT_HOME)
    g.add_argument("--budget", type=float, default=480.0)
    g.add_argument("--dry-run", action="store_true")
    g.add_argument("--no-train", action="store_true", help="tests and benchmarks only: no carried data needed")
    g.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    u = sub.add_parser("unpack", help="here: the files a go call returned -> results/")
    u.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except SystemExit as exc:  # the one-line refusals above: exit 2, like the kit's other commands
        if isinstance(exc.code, str):
            print(f"device_run: {exc.code}", file=sys.stderr)
            return 2
        raise


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "prepare":
        budget = int(args.budget_mib * 2**20) if args.budget_mib else CALL_LIMIT - tracked_bytes() - MARGIN
        prepare(args.shared_data, ROOT / "results", args.part, budget)
    elif args.cmd == "stage":
        stage(args.home)
    elif args.cmd == "go":
        if args.out is None:
            print("go: no $OUT and no --out: where should the packed results go?", file=sys.stderr)
            return 2
        return go(args.home, args.budget, args.dry_run, args.out, train=not args.no_train)
    else:
        unpack(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
