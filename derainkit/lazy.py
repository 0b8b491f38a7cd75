"""``lazy(module, "Name.attr")``: a callable that imports its target on first call.

Registries (models, training tasks) list their entries with it, so reading a registry (e.g. to
validate a run config) does not import every network, and lower layers never import higher ones.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """A callable that imports ``module`` and calls ``attr`` (dotted: ``"Class.method"``) when called."""
    def call(*args: Any, **kwargs: Any) -> Any:
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        return target(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{attr}"
    return call
