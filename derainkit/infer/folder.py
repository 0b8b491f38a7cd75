"""Derain a photo or a folder of photos into an output folder, safely and resumably.

What this guarantees (``derainkit derain`` is built on it):

* **Inputs are never written.** The output folder may not be the input folder (a result would replace
  a photo, or a second run would derain its own results), no output may be an input file (by path or
  by inode: hard links count), and two inputs may not map to one output (``a.jpg`` and ``a.png``).
* **Nothing is written through a link** and every image appears whole or not at all
  (:mod:`derainkit.fsutil`); writability is checked before the model is loaded, so a read-only
  folder fails in one line before any work.
* **The log accumulates.** ``derain_log.json`` in the output folder lists every run (model, weights
  digest, settings, provenance) and every image written, updated under a lock after each image, so
  sequential and parallel runs into one folder all keep their entries.
* **Interrupted runs resume.** An image whose output the log records as written from the same input
  (sha256) with the same settings is skipped; an output the log does not know is a user's file and
  is refused rather than overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from derainkit.errors import DerainkitError, naming_file
from derainkit.fsutil import UnsafeWriteError, check_target, locked_update, refuse_overwriting, same_file

LOG_NAME = "derain_log.json"
LOG_FORMAT = "derainkit-derain-log"
OUTPUT_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class DerainJob:
    input: Path
    output: Path
    extra: Mapping[str, Path] | None = None  # further outputs of the same image, e.g. {"rain": <stem>_rain.png}


def plan_jobs(src: Path, dst: Path, extra_suffixes: Sequence[str] = ()) -> tuple[list[DerainJob], Path]:
    """(jobs, output folder) for an image file or a folder of images; refuses what would touch an input."""
    from derainkit.data import discover_pairs
    from derainkit.io import IMAGE_EXTENSIONS, is_image_file

    if src.is_dir():
        folder = dst
        if same_file(src, dst) or (not dst.exists() and src.resolve() == dst.resolve()):
            raise UnsafeWriteError(f"{dst}: the output folder is the input folder: results would replace or sit "
                                   "among the photos (and a second run would derain them again); choose another folder")
        inputs = [p.rainy for p in discover_pairs(src, layout="unpaired")]
        outputs = [dst / (p.stem + ".png") for p in inputs]
    elif src.is_file():
        if not is_image_file(src):
            raise DerainkitError(f"{src}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        target = dst if dst.suffix.lower() in OUTPUT_SUFFIXES else dst / (src.stem + ".png")
        folder, inputs, outputs = target.parent, [src], [target]
    else:
        raise DerainkitError(f"{src}: no such file or folder")
    jobs = [DerainJob(i, o, {s: o.with_name(f"{o.stem}_{s}{o.suffix}") for s in extra_suffixes} or None)
            for i, o in zip(inputs, outputs)]
    _refuse_collisions(jobs)
    return jobs, folder


def _refuse_collisions(jobs: Sequence[DerainJob]) -> None:
    refuse_overwriting([(out, job.input) for job in jobs for out in [job.output, *(job.extra or {}).values()]],
                       [job.input for job in jobs])


def probe_writable(folder: Path) -> None:
    """Fail now, in one line, if ``folder`` cannot be created or written (before any model work)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".derainkit-write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise DerainkitError(f"{folder}: cannot write there ({exc.strerror or exc}); choose another output "
                             "folder or fix its permissions") from None


def file_digest(path: Path) -> str:
    from derainkit.data import file_sha256

    return file_sha256(path)


def settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class DerainLog:
    """``derain_log.json`` of an output folder: every run and every image written into it."""

    def __init__(self, folder: Path) -> None:
        self.path = check_target(folder / LOG_NAME)

    def read(self) -> dict[str, Any]:
        return _parse(self.path.read_text(encoding="utf-8") if self.path.is_file() else None, self.path)

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        def apply(text: str | None) -> str:
            log = _parse(text, self.path)
            change(log)
            return json.dumps(log, indent=1, default=str) + "\n"

        locked_update(self.path, apply)


def _parse(text: str | None, path: Path) -> dict[str, Any]:
    if not text:
        return {"format": LOG_FORMAT, "version": 2, "runs": [], "images": []}
    try:
        log = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DerainkitError(f"{path}: not a derainkit log ({exc}); move it away to start a new log") from None
    if not isinstance(log, dict):
        raise DerainkitError(f"{path}: not a derainkit log; move it away to start a new log")
    if "runs" not in log:  # a version-1 log (one run, written at the end): keep it as the first run
        old = {k: v for k, v in log.items() if k != "images"}
        log = {"format": LOG_FORMAT, "version": 2, "runs": [{"run": "v1", **old}],
               "images": [{"run": "v1", **r} for r in log.get("images", [])]}
    return log


def derain_jobs(jobs: Sequence[DerainJob], predict: Callable, log: DerainLog, run: Mapping[str, Any],
                bit_depth: str = "auto", progress: bool = True) -> dict[str, int]:
    """Run ``predict(pixels) -> ({"derained": image, <extra>: image ...}, plan)`` on each job, resuming and
    logging as the module docstring says. Returns counts of images written and skipped."""
    from tqdm.auto import tqdm

    digest = settings_digest(run["settings"])
    known = log.read()["images"]
    todo = _resume(jobs, known, digest)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    log.update(lambda lg: (lg.update(model=run["model"], weights=run["weights"]),
                           lg["runs"].append({"run": run_id, "settings_digest": digest, "started": time.time(),
                                              "skipped": len(jobs) - len(todo), **run})))
    for job, input_sha in tqdm(todo, desc="derain", unit="img", disable=len(todo) <= 1 or not progress):
        # Claimed before writing: a run killed between the (atomic) write and the log entry still owns the
        # file, so the rerun redoes it instead of refusing it as a user's file.
        claim = {"run": run_id, "settings_digest": digest, "status": "pending", "input": str(job.input),
                 "output": str(job.output), "input_sha256": input_sha,
                 "extra_outputs": {k: str(v) for k, v in (job.extra or {}).items()}}
        log.update(lambda lg, c=claim: lg["images"].append(c))
        record = _derain_one(job, input_sha, predict, bit_depth)
        log.update(lambda lg, r=record, o=str(job.output): _mark_written(lg, run_id, o, r))
        tile = record["tiling"]["tile"]
        how = "whole image" if tile is None else f"tiles {tile}px overlap {record['tiling']['overlap']}"
        print(f"{job.input} -> {job.output} ({record['width']}x{record['height']}, {record['bit_depth']}-bit, {how})")
    log.update(lambda lg: next(r for r in lg["runs"] if r["run"] == run_id).update(finished=time.time()))
    return {"written": len(todo), "skipped": len(jobs) - len(todo)}


def _mark_written(log: dict[str, Any], run_id: str, output: str, record: Mapping[str, Any]) -> None:
    for entry in reversed(log["images"]):
        if entry.get("run") == run_id and entry.get("output") == output:
            entry.update(record, status="written")
            return


def _resume(jobs: Sequence[DerainJob], known: Sequence[Mapping[str, Any]], digest: str
            ) -> list[tuple[DerainJob, str]]:
    """The jobs still to do, with their input digests; refuses outputs the log does not know."""
    by_output = {}
    for r in known:  # later entries win: the newest record of each output
        for out in [r.get("output", ""), *(r.get("extra_outputs") or {}).values()]:
            by_output[str(Path(out).resolve())] = r
    todo = []
    for job in jobs:
        input_sha = file_digest(job.input)
        outputs = [job.output, *(job.extra or {}).values()]
        records = [by_output.get(str(o.resolve())) for o in outputs]
        existing = [o for o in outputs if o.exists() or o.is_symlink()]
        if len(existing) == len(outputs) and all(
                r is not None and r.get("status", "written") == "written" and r.get("settings_digest") == digest
                and r.get("input_sha256") == input_sha for r in records):
            continue  # done by an earlier run with these settings
        for out, rec in zip(outputs, records):
            if (out.exists() or out.is_symlink()) and rec is None:
                raise UnsafeWriteError(f"{out}: exists and was not written by derainkit into this folder; the kit "
                                       "does not overwrite it: move it away or choose another output folder")
        todo.append((job, input_sha))
    return todo


def _derain_one(job: DerainJob, input_sha: str, predict: Callable, bit_depth: str) -> dict[str, Any]:
    from derainkit.io import load_image, write_image

    img = load_image(job.input)
    outs, plan = naming_file(job.input, lambda: predict(img.pixels))
    depth = img.bit_depth if bit_depth == "auto" else int(bit_depth)
    write_image(job.output, outs["derained"], bit_depth=depth)
    extra = {}
    for name, path in (job.extra or {}).items():
        write_image(path, outs[name], bit_depth=depth)
        extra[name] = str(path)
    h, w = outs["derained"].shape[:2]
    record = {"input": str(job.input), "output": str(job.output), "input_sha256": input_sha, "height": h, "width": w,
              "bit_depth": depth, "exif_orientation_applied": img.orientation, "tiling": plan.to_dict()}
    if extra:
        record["extra_outputs"] = extra
    return record
