"""Patch kNN engine: MSGNN-compatible patch extraction/folding and exact global or windowed search.

    from derainkit.knn import Window, extract_patches, knn

    q, qgrid = extract_patches(query_map, 3, 3)      # b×m×288 for a 32-channel map
    x, xgrid = extract_patches(cand_map, 3, 3)
    dist, idx = knn(q, x, 5, query_grid=qgrid, cand_grid=xgrid,
                    window=Window(30, "msgnn", scale=2), eps=1e-5)   # official MSGNN ½-scale branch

Results are exact (squared L2, ties to the lower candidate index) and do not depend on the device's GEMM,
the blocking or the memory budget; `knn_reference_fp64` is the brute-force float64 reference.

Modules: `patches` (extraction/folding), `search` (entry point: `knn`, the reference, input checks),
`geometry` (windows, query blocks), `select` (exact selection shared by every path), `global_search`,
`windowed`, `backends` (shortlist GEMMs: oneDNN or public torch ops; faiss), `errors`.
"""
from __future__ import annotations

from derainkit.knn.errors import KnnError
from derainkit.knn.geometry import Window, window_index, window_origins, window_side
from derainkit.knn.patches import extract_patches, fold_patches, pad_amounts, patch_grid
from derainkit.knn.search import default_memory_budget, knn, knn_reference_fp64

__all__ = [
    "pad_amounts", "patch_grid", "extract_patches", "fold_patches",
    "Window", "knn", "knn_reference_fp64", "window_index", "window_origins", "window_side",
    "default_memory_budget", "KnnError",
]
