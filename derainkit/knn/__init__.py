"""Patch kNN engine: MSGNN-compatible patch extraction/folding and exact global or windowed search."""
from __future__ import annotations

from derainkit.knn.patches import extract_patches, fold_patches, pad_amounts, patch_grid
from derainkit.knn.search import (
    KnnError,
    Window,
    default_memory_budget,
    knn,
    knn_reference_fp64,
    window_index,
    window_origins,
    window_side,
)

__all__ = [
    "pad_amounts", "patch_grid", "extract_patches", "fold_patches",
    "Window", "knn", "knn_reference_fp64", "window_index", "window_origins", "window_side",
    "default_memory_budget", "KnnError",
]
