"""Recompute committed records into a scratch store and say, per record and number, whether they agree.

    python -m derainkit.experiments.fill verify --profile smoke [--items protocol-gap]   # = make verify

Every record the items' notebooks use is computed afresh (``$DERAINKIT_RESULTS`` points the notebooks
at an empty scratch folder) and compared with the committed record of the same key, number by number:
*identical*; *within tolerance* (``|ours − committed| ≤ ATOL + RTOL·|committed|``: the last bits of a
float sum change with the thread count and the CPU's vector width); *differs*; or *not committed*
(the committed store lacks the record: the committed tables could not have been rendered from it).
Only numbers are compared (metrics, image counts, parameter counts, study results); provenance, wall
times, training timings, paths and descriptive text are not: they describe the machine or the code's
wording, not the result.
Derained images (``derain_image`` records) are compared pixel by pixel (within 1 grey level).
"""
from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from derainkit.experiments.plan import ITEMS, REPO, scoped_environ, notebook_parameters, resolve_items

ATOL, RTOL = 1e-4, 1e-6
_NOT_COMPARED = {"provenance", "wall_seconds", "run", "run_config", "version"}
_ORDER = ("identical", "within tolerance", "differs", "not committed")


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k in sorted(value):
            if not path and k in _NOT_COMPARED:
                continue
            yield from _leaves(value[k], f"{path}.{k}" if path else str(k))
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_values(ours: Any, committed: Any) -> str:
    if ours == committed:
        return "identical"
    number = (int, float)
    if isinstance(ours, number) and isinstance(committed, number) and not isinstance(ours, bool):
        if math.isfinite(ours) and math.isfinite(committed) and abs(ours - committed) <= ATOL + RTOL * abs(committed):
            return "within tolerance"
    return "differs"


def _image_verdict(a: Path, b: Path) -> tuple[str, str]:
    import numpy as np

    from derainkit.io import read_image

    if not a.is_file() or not b.is_file():
        return "differs", f"missing {'ours' if not a.is_file() else 'committed'}"
    x, y = read_image(a), read_image(b)
    if x.shape != y.shape:
        return "differs", f"shape {x.shape} vs {y.shape}"
    scale = 255 if x.dtype.kind == "f" else 1  # read_image gives floats in [0, 1]: grey levels are 1/255
    d = int(np.rint(np.abs(x.astype(np.float64) - y.astype(np.float64)).max() * scale))
    return ("identical" if d == 0 else "within tolerance" if d <= 1 else "differs"), f"max |Δ| {d} grey levels"


@dataclass
class VerifyReport:
    profile: str
    items: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # record, item kind, number, ours, committed, verdict

    def record_verdicts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.rows:
            cur = out.get(r["record"], "identical")
            out[r["record"]] = max(cur, r["verdict"], key=_ORDER.index)
        return out

    @property
    def ok(self) -> bool:
        return not any(v in ("differs", "not committed") for v in self.record_verdicts().values())

    def summary(self) -> str:
        verdicts = self.record_verdicts()
        counts = {v: sum(x == v for x in verdicts.values()) for v in _ORDER}
        bad = [f"{k} ({v})" for k, v in sorted(verdicts.items()) if v in ("differs", "not committed")]
        head = (f"verify {self.profile} ({', '.join(self.items)}): {len(verdicts)} records: {counts['identical']} identical, "
                f"{counts['within tolerance']} within tolerance, {counts['differs']} differ, "
                f"{counts['not committed']} not committed")
        return head + (f"; failing: {', '.join(bad)}" if bad else " - reproduced")

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["record", "kind", "number", "ours", "committed", "verdict"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()


def compare_stores(ours: Path, committed: Path, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows comparing each record of the ``ours`` store (or those in ``keys``) with ``committed``'s."""
    from derainkit.experiments.store import Store

    mine, theirs = Store(ours), Store(committed)
    rows = []
    for rec in mine.records():
        if keys is not None and rec["key"] not in keys:
            continue
        key, kind = rec["key"], rec["spec"].get("kind")
        old = theirs.get(key)
        if old is None:
            rows.append({"record": key, "kind": kind, "number": "(record)", "ours": "present", "committed": "absent",
                         "verdict": "not committed"})
            continue
        a, b = dict(_leaves(rec)), dict(_leaves(old))
        for name in sorted(n for n in set(a) | set(b) if _is_number(a.get(n)) or _is_number(b.get(n))):
            rows.append({"record": key, "kind": kind, "number": name, "ours": a.get(name), "committed": b.get(name),
                         "verdict": compare_values(a.get(name), b.get(name))})
        for rel in (rec.get("outputs") or {}).values():  # images a record made (derain_image)
            verdict, note = _image_verdict(mine.root / rel, theirs.root / rel)
            rows.append({"record": key, "kind": kind, "number": rel, "ours": note, "committed": "", "verdict": verdict})
    return rows


def verify(items: Sequence[str] | str | None, profile: str, pairs: Sequence[tuple[str, str]] = (),
           results_dir: str | Path | None = None, out: Path | None = None, scratch: str | Path | None = None,
           progress: bool = True) -> VerifyReport:
    """Recompute the records ``items`` use under ``profile`` into ``scratch`` (a new temporary folder unless
    given: an existing one is reused, nothing is recomputed that it holds) and compare with the committed
    store under ``results_dir``."""
    from tqdm.auto import tqdm

    from derainkit.experiments.run_notebook import run

    items = resolve_items(items)
    committed_root = Path(results_dir or REPO / "results")
    own_scratch = scratch is None
    scratch = Path(scratch or tempfile.mkdtemp(prefix="derainkit-verify-"))
    try:
        for item in tqdm(items, desc=f"verify ({profile})", disable=not progress):
            nb = REPO / "notebooks" / f"{ITEMS[item]}.ipynb"
            params = notebook_parameters(item, profile, pairs, scratch)
            with scoped_environ(DERAINKIT_RESULTS=str(scratch), DERAINKIT_STORE_MODE=None, DERAINKIT_STORE_ONLY=None):
                run(nb, scratch / profile / "notebooks" / nb.name, params, REPO / "notebooks", progress=False)
        report = VerifyReport(profile, items, compare_stores(scratch / profile / "runs", committed_root / profile / "runs"))
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if out is not None:
        from derainkit.fsutil import atomic_write_text

        atomic_write_text(out, report.csv())
    return report



