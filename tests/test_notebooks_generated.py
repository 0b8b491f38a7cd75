"""The committed notebooks are what scripts/build_notebooks.py writes (cell types, sources, tags), so the
generator stays their one source; and their parameters cells carry the smoke profile's values."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(book) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in book.cells]


def test_every_notebook_matches_its_generator():
    gen = _generator()
    committed = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert committed == sorted(gen.NOTEBOOKS), "a notebook without a generator entry (or the reverse)"
    for name, spec in gen.NOTEBOOKS.items():
        have = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        want = gen.nb(**spec)
        assert _cells(have) == _cells(want), (f"notebooks/{name}.ipynb differs from scripts/build_notebooks.py; "
                                              "rerun `python scripts/build_notebooks.py --execute`")


def test_parameters_cells_hold_the_smoke_profile():
    from derainkit.experiments.lab import Profile, profile_values

    smoke = profile_values("smoke")
    gen = _generator()
    for name, spec in gen.NOTEBOOKS.items():
        cell = next(c for c in gen.nb(**spec).cells if "parameters" in c.metadata.get("tags", []))
        namespace: dict = {}
        exec(cell.source, namespace)  # noqa: S102 - our own generated cell
        for key in ("train_data", "test_data", "eval_limit", "iterations", "crop", "batch", "model_config",
                    "run_overrides", "device", "protocols"):
            assert namespace[key] == smoke[key], (name, key)
        assert namespace["profile"] == smoke["name"] == "smoke"
    default = Profile()
    assert (default.eval_limit, default.iterations, default.model_config) == \
        (smoke["eval_limit"], smoke["iterations"], smoke["model_config"])
