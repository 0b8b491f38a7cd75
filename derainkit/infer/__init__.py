"""Inference: derain images of any size on CPU or GPU, tiling when memory requires it."""
from derainkit.infer.predictor import Predictor, load_predictor, resolve_device  # noqa: F401
from derainkit.infer.tiling import TilePlan, plan_tiles, run_tiled  # noqa: F401
