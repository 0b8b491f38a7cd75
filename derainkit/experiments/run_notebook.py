"""Execute a paper-item notebook with a profile, refusing what papermill would only warn about.

    python -m derainkit.experiments.run_notebook notebooks/table5_neighbours.ipynb out.ipynb \
        --profile cpu -p force 1 -p eval_limit 5

Papermill injects any ``-p`` name, known or not, and only warns about a misspelt one (``evl_limit``),
so the run silently uses the default. Here every parameter name (from the profile file and ``-p``)
must be one the notebook's parameters cell declares, values are read as YAML (``-p model_config
'{"k": 7}'`` is a mapping, not text) and the profile's values are checked by
:class:`derainkit.experiments.lab.Profile` before the kernel starts; bad input is one line on stderr
with exit status 2. ``make <item>`` runs notebooks through this.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from derainkit.errors import ConfigError, DerainkitError, OneLineParser


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Name -> default of the notebook's ``parameters`` cell (papermill's own reading of it)."""
    import papermill

    try:
        return {name: info.get("default") for name, info in papermill.inspect_notebook(str(notebook)).items()}
    except Exception as exc:  # noqa: BLE001 - papermill/nbformat raise many types for a bad file
        raise DerainkitError(f"{notebook}: cannot be read as a parameterised notebook ({exc})") from None


def resolve_parameters(notebook: Path, profile: str | None, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The parameters to inject: the profile file's values, then ``-p`` pairs; every name checked."""
    from derainkit.experiments.lab import Profile, profile_values
    from derainkit.strictconfig import load_yaml

    declared = declared_parameters(notebook)
    params: dict[str, Any] = {}
    if profile:
        values = profile_values(profile)
        # a profile's values for one notebook's own parameters: `notebook_params: {<notebook stem>: {...}}`
        own = (values.pop("notebook_params", None) or {}).get(notebook.stem, {})
        values.pop("cluster", None)  # Slurm settings of `fill` (derainkit.experiments.fill), not a parameter
        params.update({("profile" if k == "name" else k): v for k, v in values.items()})
        params.update(own)
    for name, text in pairs:
        params[name] = load_yaml(text, f"-p {name}") if text.strip() else None
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"{notebook}: unknown parameter(s) {unknown}; this notebook's parameters: {sorted(declared)}")
    fields = {f for f in Profile.__dataclass_fields__} - {"name"}
    merged = {**{k: v for k, v in declared.items() if k in fields}, **{k: v for k, v in params.items() if k in fields}}
    Profile.from_params(name=params.get("profile", "smoke"), **_literal_defaults(merged))  # raises on bad values
    return params


def _literal_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """papermill reports declared defaults as source text ('"embedded:test"', '3'): evaluate them."""
    import ast

    out = {}
    for k, v in values.items():
        if isinstance(v, str):
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
        out[k] = v
    return out


def run(notebook: Path, output: Path, parameters: dict[str, Any], cwd: Path, progress: bool = True) -> None:
    import papermill

    from derainkit.fsutil import check_target

    check_target(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(cwd),
                                   log_output=False, progress_bar=progress)
    except papermill.PapermillExecutionError as exc:
        raise NotebookError(notebook, exc.exec_count, exc.ename, exc.evalue, output) from None


class NotebookError(DerainkitError):
    """A notebook cell raised: the message is one line naming the notebook, the cell and the executed copy;
    ``reason`` is the failure alone (for callers that report it in their own words, e.g. ``plan``)."""

    def __init__(self, notebook: Path, cell: int | None, ename: str, evalue: str, output: Path) -> None:
        self.notebook, self.cell, self.ename, self.evalue, self.output = notebook, cell, ename, evalue, output
        self.reason = f"{notebook}: cell {cell} failed: {ename}: {evalue}"
        super().__init__(f"{self.reason} (the executed copy is {output})")


@contextlib.contextmanager
def record_counts() -> Iterator[Callable[[], str]]:
    """Count the store's events of the kernels started inside (``$DERAINKIT_STORE_LOG``): yields a function
    that says "N records reused, M computed" (and waits, when a run waited for another worker's)."""
    import json
    import tempfile

    from derainkit.experiments.plan import scoped_environ

    with tempfile.TemporaryDirectory(prefix="derainkit-events-") as tmp, \
            scoped_environ(DERAINKIT_STORE_LOG=str(Path(tmp) / "events.jsonl")):
        log = Path(tmp) / "events.jsonl"

        def counts() -> str:
            events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
            n = {name: len({e["key"] for e in events if e["event"] == name}) for name in ("reused", "computed")}
            waited = len({e["key"] for e in events if e.get("waited")})
            return (f"{n['reused']} records reused, {n['computed']} computed"
                    + (f" ({waited} after waiting for another worker)" if waited else ""))
        yield counts


def main(argv: Sequence[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m derainkit.experiments.run_notebook", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--profile", help="profile name (derainkit/experiments/profiles/<name>.yaml)")
    ap.add_argument("-p", dest="pairs", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a parameter (value read as YAML); repeatable")
    ap.add_argument("--cwd", type=Path, default=None, help="working folder of the kernel (default: the notebook's)")
    args = ap.parse_args(argv)
    try:
        if not args.notebook.is_file():
            raise DerainkitError(f"{args.notebook}: notebook not found")
        params = resolve_parameters(args.notebook, args.profile, args.pairs)
        with record_counts() as counts:
            run(args.notebook, args.output, params, args.cwd or args.notebook.parent)
            print(f"{args.notebook.stem}: {counts()}")
    except DerainkitError as exc:
        print(f"derainkit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
