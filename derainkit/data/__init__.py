"""Datasets: pair discovery in the field's folder layouts, manifests, synthetic rain, the embedded set."""
from derainkit.data.layouts import (CLEAN_SIDES, LAYOUTS, Pair, detect_layout, discover_pairs, image_size,
                                    load_pair, natural_key)

__all__ = ["CLEAN_SIDES", "LAYOUTS", "Pair", "detect_layout", "discover_pairs", "image_size", "load_pair",
           "natural_key"]
