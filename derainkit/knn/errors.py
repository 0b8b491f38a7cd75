"""The kNN engine's error type (its own module so that every other knn module can raise it)."""
from __future__ import annotations

from derainkit.errors import DerainkitError


class KnnError(DerainkitError):
    """Bad input to the patch kNN (shapes, grids, window, k, backend)."""
