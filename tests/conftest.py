"""Shared test fixtures. `../shared` (data, weights, official fixtures) is optional: tests that
need it skip cleanly when it is absent, so a user's clone without it still passes."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is optional)")
    return path


def load_script(name: str):
    """A file of scripts/ imported as a module (they are run as files, not installed)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def tiny_profile(tmp_path: Path, **changes):
    """An experiments Profile that trains a 4-channel MSGNN for 2 iterations and scores 1 embedded image:
    real Lab runs in a second or two."""
    from derainkit.experiments import Profile

    base = dict(name="t", results_dir=str(tmp_path / "results"), iterations=2, batch=1, crop=32, eval_limit=1,
                model_config={"n_subnets": 2, "m_blocks": 1, "channels": 4, "window_size": 6},
                device="cpu", progress=False)
    base.update(changes)
    return Profile(**base)


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread: on the shared 2-core machine a second OpenMP thread mostly spins,
    so one is faster and steadier. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
