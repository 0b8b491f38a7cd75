#!/usr/bin/env python3
"""Ship a better MSGNN checkpoint, and only with its measured score.

    python scripts/ship_msgnn.py results/gpu/train/shipped/<hash>            # score it, say whether it would ship
    python scripts/ship_msgnn.py results/gpu/train/shipped/<hash> --apply    # and ship it if it is better
    python scripts/ship_msgnn.py run.safetensors --limit 10                  # a quick look (never ships)
    make ship-msgnn CANDIDATE=results/gpu/train/shipped/<hash> [APPLY=1]

The candidate is a training run of the shipped model's own architecture (``make gpu-run`` continues it on a GPU;
``make train-shipped`` retrains it): its finished ``model.safetensors``, or, for a run still going, a snapshot
of its latest checkpoint exported beside it (``snapshot_iter<N>.safetensors``, metadata marked partial with
the iteration). A file of another model or model config is refused: a larger model is a new checkpoint, with
its own README, not a quiet replacement.

Both are scored like ``make evaluate-msgnn`` (the CLI's ``evaluate``: whole images, outputs rounded to uint8,
protocols matlab-y, msgnn-rgb and y-float) on the same test set. The shipped file's score is read from
``results/msgnn_shipped_rain100l/summary.json`` when that summary names the shipped file's digest and the same
data manifest, and measured again otherwise. The candidate ships when its ``matlab-y`` PSNR, the README's
headline figure, is higher on the whole test set. ``--apply`` then replaces
``derainkit/weights/msgnn_raintrainl.safetensors`` and the summary (each atomically), appends a line to
``results/msgnn_shipped_rain100l/history.csv`` (both scores, digests, iterations, commit), and lists what to
commit; ``derainkit/weights/README.md`` must then be edited by hand with the new numbers.
Exit status: 0 when it ran (shipped or not), 2 for a bad candidate or data.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit itself, when run from a clone without installing

SHIPPED = ROOT / "derainkit" / "weights" / "msgnn_raintrainl.safetensors"
SUMMARY_DIR = ROOT / "results" / "msgnn_shipped_rain100l"
PROTOCOLS = ("matlab-y", "msgnn-rgb", "y-float")
DECIDE_BY = "matlab-y"
HISTORY_FIELDS = ["time", "commit", "decision", "candidate", "candidate_sha256", "iterations", "total_iterations",
                  "partial", "candidate_psnr", "candidate_ssim", "shipped_sha256", "shipped_psnr", "shipped_ssim",
                  "n_images", "manifest_sha256"]


def default_data() -> str:
    """Rain100L test: ../shared/data beside the clone when it is there, else the kit's data root."""
    local = ROOT.parent / "shared" / "data" / "rain100l" / "test"
    return str(local) if local.is_dir() else "data:rain100l/test"


def candidate_weights(path: Path) -> Path:
    """The weights file of ``path``: a .safetensors file as it is; a run folder's finished model.safetensors;
    else a snapshot of its latest checkpoint, exported once per iteration beside it."""
    from derainkit.errors import DerainkitError

    if path.is_file():
        return path
    if not path.is_dir():
        raise DerainkitError(f"{path}: no such file or run folder; pass a .safetensors file or a training run folder")
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    return export_snapshot(path)


def export_snapshot(run_dir: Path) -> Path:
    """Export the weights of ``run_dir``'s latest checkpoint as ``snapshot_iter<N>.safetensors`` (kept: the same
    checkpoint always gives the same bytes), with the run's metadata and ``partial: true``."""
    from derainkit.errors import CheckpointError
    from derainkit.models import get_model_spec
    from derainkit.provenance import git_commit
    from derainkit.train.checkpoint import load_checkpoint
    from derainkit.train.config import canonical_model_config
    from derainkit.weights import export_safetensors

    state = load_checkpoint(run_dir)
    name, config = state["model_name"], state.get("config") or {}
    if set(state["modules"]) != {"model"}:
        raise CheckpointError(f"{run_dir}: a checkpoint of task {state.get('task')!r} with modules "
                              f"{sorted(state['modules'])}; only a paired run (one model) can be shipped")
    spec = get_model_spec(name)
    model_config = canonical_model_config(name, config.get("model_config") or {})
    net = spec.build(spec.config_from_dict(model_config))
    net.load_state_dict(state["modules"]["model"], strict=True)
    out = run_dir / f"snapshot_iter{int(state['iteration'])}.safetensors"
    if not out.is_file():
        export_safetensors(net, out, {
            "model": name, "model_config": model_config, "task": state.get("task", "paired"),
            "config_hash": state["config_hash"], "commit": git_commit(), "iterations": int(state["iteration"]),
            "total_iterations": int(state["total_iterations"]), "partial": True, "run_config": config})
    return out


def check_same_architecture(candidate: Path, shipped: Path) -> dict[str, Any]:
    """The candidate's metadata, after checking it is an MSGNN export with the shipped model's config."""
    from derainkit.errors import CheckpointError
    from derainkit.models import exported_metadata

    theirs, ours = exported_metadata(candidate), exported_metadata(shipped)
    if theirs.get("model") != "msgnn":
        raise CheckpointError(f"{candidate}: weights of model {theirs.get('model')!r}, not an MSGNN export of the kit")
    if theirs.get("model_config") != ours.get("model_config"):
        diff = sorted(k for k in set(theirs.get("model_config") or {}) | set(ours.get("model_config") or {})
                      if (theirs.get("model_config") or {}).get(k) != (ours.get("model_config") or {}).get(k))
        raise CheckpointError(f"{candidate}: another MSGNN config than the shipped one (differs in: {', '.join(diff)}); "
                              "a new architecture is a new checkpoint, not a replacement")
    return theirs


def evaluate_weights(weights: Path, data: str, out: Path, limit: int = 0) -> dict[str, Any]:
    """``derainkit evaluate --model msgnn --weights W`` (the three protocols) into ``out``; its summary.json."""
    from derainkit.cli import main as cli_main

    argv = ["evaluate", "--model", "msgnn", "--weights", str(weights), "--data", data, "--out", str(out)]
    for p in PROTOCOLS:
        argv += ["--protocol", p]
    if limit:
        argv += ["--limit", str(limit)]
    with redirect_stdout(io.StringIO()):  # the table is printed by the caller, once
        rc = cli_main(argv)
    if rc != 0:
        raise RuntimeError(f"evaluate exited {rc} for {weights}")
    return json.loads((out / "summary.json").read_text())


def shipped_summary(shipped: Path, summary_dir: Path, manifest_sha256: str) -> dict[str, Any] | None:
    """The stored summary of the shipped file, when it names its digest and the same test manifest."""
    from derainkit.data import file_sha256

    path = summary_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("weights_sha256") != file_sha256(shipped) or summary.get("manifest_sha256") != manifest_sha256:
        return None
    return summary


def decide(candidate: dict[str, Any], shipped: dict[str, Any], full_set: bool) -> tuple[bool, str]:
    """(ship?, why): higher matlab-y PSNR on the whole, identical test set."""
    c, s = candidate["metrics"][DECIDE_BY]["psnr"], shipped["metrics"][DECIDE_BY]["psnr"]
    if candidate.get("manifest_sha256") != shipped.get("manifest_sha256"):
        return False, "the two were scored on different test sets"
    if not full_set:
        return False, f"scored on the first {candidate['n_images']} images only (--limit): a look, never a release"
    if c > s:
        return True, f"{DECIDE_BY} {c:.3f} dB > shipped {s:.3f} dB (+{c - s:.3f})"
    return False, f"{DECIDE_BY} {c:.3f} dB <= shipped {s:.3f} dB ({c - s:+.3f}): the shipped checkpoint stays"


def _append_history(path: Path, row: dict[str, Any]) -> None:
    from derainkit.fsutil import atomic_write_text

    old = path.read_text() if path.is_file() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
    atomic_write_text(path, old + buf.getvalue())


def ship(candidate: Path, data: str, limit: int = 0, apply: bool = False, shipped: Path = SHIPPED,
         summary_dir: Path = SUMMARY_DIR) -> dict[str, Any]:
    """Score ``candidate`` against the shipped checkpoint and, with ``apply``, ship it when it is better."""
    from derainkit.data import file_sha256
    from derainkit.fsutil import atomic_path, check_target
    from derainkit.provenance import git_commit, now_iso

    weights = candidate_weights(candidate)
    meta = check_same_architecture(weights, shipped)
    with tempfile.TemporaryDirectory(prefix="ship-msgnn-") as scratch:
        scratch = Path(scratch)
        cand = evaluate_weights(weights, data, scratch / "candidate", limit)
        current = shipped_summary(shipped, summary_dir, cand["manifest_sha256"]) if not limit else None
        if current is None:
            current = evaluate_weights(shipped, data, scratch / "shipped", limit)
        ok, why = decide(cand, current, full_set=not limit)
        report = {"candidate": str(weights), "candidate_sha256": file_sha256(weights), "ship": ok, "why": why,
                  "applied": False, "iterations": meta.get("iterations"),
                  "total_iterations": meta.get("total_iterations") or meta.get("iterations"),
                  "partial": bool(meta.get("partial")), "candidate_metrics": cand["metrics"],
                  "shipped_metrics": current["metrics"], "shipped_sha256": file_sha256(shipped),
                  "n_images": cand["n_images"], "manifest_sha256": cand["manifest_sha256"], "limit": limit}
        if ok and apply:
            check_target(shipped)  # never through a link the kit did not make
            with atomic_path(shipped) as tmp:
                shutil.copyfile(weights, tmp)
            summary_dir.mkdir(parents=True, exist_ok=True)
            for name in ("summary.json", "summary.md", "per_image.csv", "manifest.csv"):
                src = scratch / "candidate" / name
                if src.is_file():
                    check_target(summary_dir / name)
                    with atomic_path(summary_dir / name) as tmp:
                        shutil.copyfile(src, tmp)
            report["applied"] = True
        if not limit:  # the history keeps releases and refusals on the whole set, not quick looks
            m, s = cand["metrics"][DECIDE_BY], current["metrics"][DECIDE_BY]
            decision = "shipped" if report["applied"] else "would ship (not applied)" if ok else "kept the shipped one"
            _append_history(summary_dir / "history.csv", {
                "time": now_iso(), "commit": git_commit(), "decision": decision, "candidate": str(weights),
                "candidate_sha256": report["candidate_sha256"], "iterations": report["iterations"],
                "total_iterations": report["total_iterations"], "partial": report["partial"],
                "candidate_psnr": round(m["psnr"], 4), "candidate_ssim": round(m["ssim"], 5),
                "shipped_sha256": report["shipped_sha256"], "shipped_psnr": round(s["psnr"], 4),
                "shipped_ssim": round(s["ssim"], 5), "n_images": cand["n_images"],
                "manifest_sha256": cand["manifest_sha256"]})
    return report


def main(argv: list[str] | None = None) -> int:
    from derainkit.errors import DerainkitError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate", type=Path, help="a training run folder or an exported .safetensors file")
    ap.add_argument("--data", default=None, help="test set (default: ../shared/data/rain100l/test or data:rain100l/test)")
    ap.add_argument("--limit", type=int, default=0, help="score the first N images only (a look; never ships)")
    ap.add_argument("--apply", action="store_true", help="replace the shipped checkpoint when the candidate is better")
    args = ap.parse_args(argv)
    if args.limit < 0:
        print(f"--limit {args.limit}: must be >= 0", file=sys.stderr)
        return 2
    try:
        report = ship(args.candidate, args.data or default_data(), args.limit, args.apply)
    except DerainkitError as exc:
        print(f"ship-msgnn: {exc}", file=sys.stderr)
        return 2
    what = "iteration {} of {}{}".format(report["iterations"], report["total_iterations"],
                                         " (snapshot of a run still going)" if report["partial"] else "")
    print(f"candidate: {report['candidate']} ({what})")
    for p in PROTOCOLS:
        c, s = report["candidate_metrics"][p], report["shipped_metrics"][p]
        print(f"  {p:<10} candidate {c['psnr']:.3f} / {c['ssim']:.4f}   shipped {s['psnr']:.3f} / {s['ssim']:.4f}")
    print(f"{report['n_images']} images: {report['why']}")
    if report["applied"]:
        print("shipped. To commit: git add derainkit/weights/msgnn_raintrainl.safetensors results/msgnn_shipped_rain100l; "
              "then edit derainkit/weights/README.md with these numbers and the run that made them")
    elif report["ship"]:
        print("rerun with --apply to ship it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
