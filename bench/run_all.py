"""Run every benchmark module in bench/ and write results/bench/*.csv plus SUMMARY.md.

Each benchmark module exposes `run(out_dir: Path, quick: bool) -> list[Path]` (the CSVs it wrote)
and `summarize(paths) -> str` (a short Markdown section). Usage:

    python -m bench.run_all --out results/bench [--only knn_global,knn_windowed] [--quick]
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

import bench
from bench.common import device_name, git_commit


def discover() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")]
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--only", default="", help="comma-separated module names (without the bench_ prefix)")
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run, not for reporting)")
    args = ap.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {f"bench_{n.strip().removeprefix('bench_')}" for n in args.only.split(",") if n.strip()}
        unknown = wanted - set(names)
        if unknown:
            print(f"unknown benchmark(s): {sorted(unknown)}; available: {names}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        paths = mod.run(args.out, args.quick)
        # each module's section carries the commit and device of its own run, so a partial rerun
        # (--only) refreshes its section and keeps the others
        header = f"<!-- {name}: commit {git_commit()}, device {device_name()} -->\n"
        (args.out / f"{name}{suffix}.md").write_text(header + mod.summarize(paths) + "\n")
        print(f"   {name}: {time.perf_counter() - t0:.1f} s -> {[str(p) for p in paths]}", flush=True)
    sections = ["# Benchmarks" + (" (QUICK run, not for reporting)" if args.quick else "") + "\n\n"
                "Each section names the commit and device it was measured at (HTML comment above it)."]
    sections += [p.read_text() for p in sorted(args.out.glob(f"bench_*{suffix}.md"))
                 if args.quick or not p.stem.endswith("-quick")]
    summary = args.out / f"SUMMARY{suffix}.md"
    summary.write_text("\n\n".join(sections) + "\n")
    print(f"wrote {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
