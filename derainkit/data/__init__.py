"""Datasets: pair discovery in the field's folder layouts, manifests, synthetic rain, the embedded set.

    pairs = discover_pairs("data/rain100l/test")          # layout detected; or layout="prenet", ...
    rainy, clean = load_pair(pairs[0])                     # H×W×3 float32 RGB in [0, 1]
    digest = write_manifest(pairs, "manifest.csv")         # sha256 keying results to these files
    root = embedded_root("test")                           # built-in set, no download
"""
from derainkit.data.embedded import build_embedded, embedded_info, embedded_root, resolve_data_path
from derainkit.data.layouts import (CLEAN_SIDES, LAYOUTS, Pair, detect_layout, discover_pairs, image_size,
                                    load_pair, natural_key)
from derainkit.data.manifest import file_sha256, manifest_digest, manifest_rows, read_manifest, write_manifest
from derainkit.data.paths import cache_dir, data_root
from derainkit.data.synthetic import PRESETS, RainParams, add_rain, make_paired_dataset, rain_layer

__all__ = [
    "CLEAN_SIDES", "LAYOUTS", "PRESETS", "Pair", "RainParams", "add_rain", "build_embedded", "cache_dir",
    "data_root", "detect_layout", "discover_pairs", "embedded_info", "embedded_root", "file_sha256",
    "image_size", "load_pair", "make_paired_dataset", "manifest_digest", "manifest_rows", "natural_key",
    "rain_layer", "read_manifest", "resolve_data_path", "write_manifest",
]
