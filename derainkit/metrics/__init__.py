"""Metrics under named protocols. `derainkit.metrics.evaluate` scores models on datasets."""
from derainkit.metrics.protocols import (  # noqa: F401
    PROTOCOLS,
    Score,
    get_protocol,
    psnr,
    quantize_uint8,
    rgb_to_y,
    score,
    ssim_wang_valid,
    ssim_zero_padded,
)
