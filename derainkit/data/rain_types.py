"""Four rain types from clean images, seeded: day/night × streaks/raindrops (UniRain's DRS, DRD, NRS, NRD).

UniRain trains one network on four kinds of rain. Offline we have real day-streak pairs (Rain100L) but
no raindrop or night data, so the other types are rendered here (reference §6.2: "tag them as
synthetic"). Every parameter of every image is drawn from the ranges below with numpy's PCG64 seeded by
``SeedSequence([seed, type index, image index])`` and recorded in ``rain_types.json`` beside the data.

``drs``  day streaks: the kit's streak model (:mod:`derainkit.data.synthetic`), parameters drawn per
         image between Rain100L-like and heavier rain, no haze.
``drd``  day raindrops on the lens. Each drop is an ellipse with a smooth alpha mask
         ``α = a · (1 − r²)^p`` (r the normalised radius); inside it the drop shows a *refracted* view:
         the background sampled point-inverted (a water drop is a short-focus lens, the scene appears
         upside down and mirrored) and minified by ``zoom`` around a point above the drop, then
         defocus-blurred; the lens also darkens towards its rim and carries a specular highlight
         offset towards the top left. Drops are composited one over another.
``nrs``  night streaks. The night *target* is the clean image darkened with a gamma curve and an
         exposure, tinted, plus point light sources (a saturated core and a Gaussian glow, street-lamp
         colours). The streaks (the kit's streak layer) are lit by the lights: their brightness is an
         ambient fraction plus a gain times the glow field, in the lights' colour. Sensor noise
         (Gaussian read noise plus signal-dependent shot noise) is added to the *input* only, so the
         target stays clean.
``nrd``  night raindrops: the drop model on the night target (drops near a light refract it into a bright
         blurred blob; highlights are dimmed to the ambient level), plus the same sensor noise.

Layout written (UniRain's, reference §4.2)::

    <out>/{drs,drd,nrs,nrd}/input/<name>.png, <out>/{...}/target/<name>.png, <out>/rain_types.json

``drs_from`` copies the day-streak pairs from a real paired folder instead (Rain100L: any layout the
kit reads), so only the three missing types are synthetic. Reproducible on one machine and library
version (scipy filters and numpy float64 arithmetic; the streak layer itself is exact integer
arithmetic everywhere).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from derainkit.data.layouts import Pair, discover_pairs, load_pair
from derainkit.data.manifest import file_sha256
from derainkit.data.synthetic import RainParams, rain_layer
from derainkit.errors import ConfigError, DatasetError
from derainkit.fsutil import atomic_write_text
from derainkit.io import read_image, write_image

PathLike = Union[str, os.PathLike]

RAIN_TYPES = ("drs", "drd", "nrs", "nrd")
TYPE_NAMES = {"drs": "day, rain streaks", "drd": "day, raindrops", "nrs": "night, rain streaks",
              "nrd": "night, raindrops"}
MANIFEST = "rain_types.json"
GENERATOR_VERSION = 1

# (low, high) of each parameter, drawn uniformly per image (ints: integers in [low, high]).
STREAK_RANGES: dict[str, tuple[float, float]] = {
    "density": (0.002, 0.005), "length": (18.0, 40.0), "angle": (-15.0, 15.0), "width": (1.0, 2.0),
    "intensity": (0.3, 0.6)}
DROP_RANGES: dict[str, tuple[float, float]] = {
    "drops_per_10k_px": (0.5, 1.5),  # drops per 100×100 px of image
    "radius_frac": (0.02, 0.065),  # drop radius / shorter image side
    "aspect": (0.75, 1.25),  # vertical / horizontal radius
    "alpha": (0.85, 1.0),  # opacity at the drop centre
    "profile": (0.25, 0.6),  # p of α = a (1 − r²)^p: small p, sharper edge
    "zoom": (2.5, 4.5),  # the drop shows zoom× its own size of the scene
    "blur_frac": (0.08, 0.2),  # defocus σ of the drop content / drop radius
    "rim": (0.1, 0.35),  # darkening at the rim
    "highlight": (0.25, 0.6),  # specular highlight strength
}
NIGHT_RANGES: dict[str, tuple[float, float]] = {
    "gamma": (1.8, 2.6), "exposure": (0.25, 0.45), "tint_r": (0.85, 1.0), "tint_b": (1.0, 1.15),
    "lights": (3, 8), "core_frac": (0.004, 0.012), "glow_scale": (3.0, 8.0), "light_intensity": (0.6, 1.2),
    "ambient": (0.08, 0.2), "lit_gain": (1.5, 3.0), "read_noise": (0.004, 0.015), "shot_noise": (0.01, 0.03),
}
LIGHT_COLOURS = {"sodium": (1.0, 0.62, 0.28), "white": (1.0, 0.95, 0.88), "cool": (0.78, 0.88, 1.0),
                 "neon_red": (1.0, 0.35, 0.35)}
_INT_KEYS = {"lights"}


# ------------------------------------------------------------------------------------------- sampling

def _draw(rng: np.random.Generator, ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, (lo, hi) in ranges.items():
        out[key] = int(rng.integers(int(lo), int(hi) + 1)) if key in _INT_KEYS else float(lo + (hi - lo) * rng.random())
    return out


def _ranges(overrides: Mapping[str, Mapping[str, Sequence[float]]] | None) -> dict[str, dict]:
    base = {"streak": dict(STREAK_RANGES), "drop": dict(DROP_RANGES), "night": dict(NIGHT_RANGES)}
    for group, values in (overrides or {}).items():
        if group not in base:
            raise ConfigError(f"rain type ranges: unknown group {group!r}; valid: {sorted(base)}")
        for key, pair in values.items():
            if key not in base[group]:
                raise ConfigError(f"rain type ranges: unknown {group} parameter {key!r}; valid: {sorted(base[group])}")
            lo, hi = (float(v) for v in pair)
            if not lo <= hi:
                raise ConfigError(f"rain type ranges: {group}.{key} = {list(pair)} must be [low, high] with low <= high")
            base[group][key] = (lo, hi)
    return base


def _rng(seed: Any) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------- streaks

def _streak_layer(h: int, w: int, rng: np.random.Generator, ranges: Mapping) -> tuple[np.ndarray, dict]:
    p = _draw(rng, ranges)
    params = RainParams(density=p["density"], length=p["length"], angle=p["angle"], width=p["width"],
                        intensity=p["intensity"], length_jitter=0.3, angle_jitter=5.0, brightness_min=0.3, layers=3)
    return rain_layer(h, w, params, rng), params.to_dict()


# ------------------------------------------------------------------------------------------- drops

def _drop_list(h: int, w: int, rng: np.random.Generator, ranges: Mapping) -> list[dict]:
    shared = _draw(rng, {k: ranges[k] for k in ("drops_per_10k_px",)})
    n = max(1, int(round(shared["drops_per_10k_px"] * h * w / 1e4)))
    drops = []
    for _ in range(n):
        d = _draw(rng, {k: v for k, v in ranges.items() if k != "drops_per_10k_px"})
        d["cy"], d["cx"] = float(rng.random() * h), float(rng.random() * w)
        drops.append(d)
    return drops


def _composite_drop(img: np.ndarray, src: np.ndarray, d: Mapping[str, float], highlight_scale: float) -> None:
    """Draw one drop into ``img`` (in place), refracting ``src`` (the undropped image)."""
    h, w = img.shape[:2]
    rx = max(2.0, d["radius_frac"] * min(h, w))
    ry = rx * d["aspect"]
    y0, y1 = max(0, int(d["cy"] - ry) - 1), min(h, int(d["cy"] + ry) + 2)
    x0, x1 = max(0, int(d["cx"] - rx) - 1), min(w, int(d["cx"] + rx) + 2)
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    v, u = (yy - d["cy"]) / ry, (xx - d["cx"]) / rx
    r2 = u * u + v * v
    alpha = d["alpha"] * np.clip(1.0 - r2, 0.0, 1.0) ** d["profile"]
    # the refracted view: inverted, minified by zoom, centred a little above the drop
    sy = d["cy"] - 0.5 * ry * d["zoom"] - v * ry * d["zoom"]
    sx = d["cx"] - u * rx * d["zoom"]
    sigma = max(0.5, d["blur_frac"] * rx)
    content = np.stack([ndimage.map_coordinates(src[:, :, c], [sy, sx], order=1, mode="nearest")
                        for c in range(3)], axis=-1)
    content = np.stack([ndimage.gaussian_filter(content[:, :, c], sigma, mode="nearest") for c in range(3)], axis=-1)
    shade = 1.0 - d["rim"] * np.clip(r2, 0.0, 1.0) ** 2
    spot = highlight_scale * d["highlight"] * np.exp(-((u + 0.35) ** 2 + (v + 0.35) ** 2) / (2 * 0.15 ** 2))
    content = content * shade[:, :, None] + spot[:, :, None]
    a = alpha[:, :, None]
    img[y0:y1, x0:x1] = (1.0 - a) * img[y0:y1, x0:x1] + a * content


def add_drops(image: np.ndarray, rng: np.random.Generator, ranges: Mapping = DROP_RANGES,
              highlight_scale: float = 1.0) -> tuple[np.ndarray, list[dict]]:
    """Raindrops on the lens over an H×W×3 image in [0, 1]: (dropped image, the drops' parameters)."""
    src = np.asarray(image, np.float64)
    drops = _drop_list(src.shape[0], src.shape[1], rng, ranges)
    out = src.copy()
    for d in drops:
        _composite_drop(out, src, d, highlight_scale)
    return np.clip(out, 0.0, 1.0).astype(np.float32), drops


# ------------------------------------------------------------------------------------------- night

def _lights(h: int, w: int, rng: np.random.Generator, p: Mapping[str, float]) -> tuple[np.ndarray, list[dict]]:
    """H×W×3 light field (cores and glows) and the lights' parameters."""
    field = np.zeros((h, w, 3))
    names = sorted(LIGHT_COLOURS)
    lights = []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(int(p["lights"])):
        colour = names[int(rng.integers(0, len(names)))]
        core = max(1.0, p["core_frac"] * min(h, w) * (0.6 + 0.8 * rng.random()))
        light = {"cy": float(rng.random() * h * 0.7), "cx": float(rng.random() * w), "colour": colour,
                 "core": float(core), "glow": float(core * p["glow_scale"]),
                 "intensity": float(p["light_intensity"] * (0.7 + 0.6 * rng.random()))}
        d2 = (yy - light["cy"]) ** 2 + (xx - light["cx"]) ** 2
        shape = np.maximum(np.clip(1.5 - np.sqrt(d2) / core, 0.0, 1.0) * 2.0, np.exp(-d2 / (2 * light["glow"] ** 2)))
        field += light["intensity"] * shape[:, :, None] * np.asarray(LIGHT_COLOURS[colour])
        lights.append(light)
    return field, lights


def night_scene(clean: np.ndarray, rng: np.random.Generator, ranges: Mapping = NIGHT_RANGES) -> tuple[np.ndarray, np.ndarray, dict]:
    """(night target, light field, parameters): gamma-darkened, tinted clean image plus light sources."""
    p = _draw(rng, ranges)
    h, w = clean.shape[:2]
    tint = np.array([p["tint_r"], 1.0, p["tint_b"]])
    dark = p["exposure"] * np.clip(np.asarray(clean, np.float64), 0.0, 1.0) ** p["gamma"] * tint
    field, lights = _lights(h, w, rng, p)
    target = np.clip(dark + field, 0.0, 1.0)
    return target, field, {**p, "light_sources": lights}


def sensor_noise(image: np.ndarray, rng: np.random.Generator, read: float, shot: float) -> np.ndarray:
    """Gaussian read noise plus shot noise whose variance grows with the signal."""
    img = np.asarray(image, np.float64)
    sigma = np.sqrt(read ** 2 + shot ** 2 * np.clip(img, 0.0, 1.0))
    return np.clip(img + sigma * rng.standard_normal(img.shape), 0.0, 1.0)


# ------------------------------------------------------------------------------------------- one pair

def render(clean: np.ndarray, rain_type: str, seed: Any = None,
           ranges: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(input, target, parameters) of one ``rain_type`` pair from an H×W×3 clean image in [0, 1]."""
    if rain_type not in RAIN_TYPES:
        raise ConfigError(f"unknown rain type {rain_type!r}; expected one of {list(RAIN_TYPES)}")
    rng, rg = _rng(seed), _ranges(ranges)
    clean = np.clip(np.asarray(clean, np.float64), 0.0, 1.0)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {clean.shape}")
    h, w = clean.shape[:2]
    if rain_type == "drs":
        layer, streaks = _streak_layer(h, w, rng, rg["streak"])
        return np.clip(clean + layer[:, :, None], 0.0, 1.0).astype(np.float32), clean.astype(np.float32), {"streaks": streaks}
    if rain_type == "drd":
        rainy, drops = add_drops(clean, rng, rg["drop"])
        return rainy, clean.astype(np.float32), {"drops": drops}
    target, field, night = night_scene(clean, rng, rg["night"])
    if rain_type == "nrs":
        layer, streaks = _streak_layer(h, w, rng, rg["streak"])
        glow = field / max(1e-6, float(field.max())) if field.max() > 0 else field
        lit = layer[:, :, None] * (night["ambient"] + night["lit_gain"] * glow)
        rainy = np.clip(target + lit, 0.0, 1.0)
        extra: dict = {"streaks": streaks}
    else:
        rainy, drops = add_drops(target, rng, rg["drop"], highlight_scale=night["ambient"])
        extra = {"drops": drops}
    rainy = sensor_noise(rainy, rng, night["read_noise"], night["shot_noise"])
    return rainy.astype(np.float32), target.astype(np.float32), {"night": night, **extra}


# ------------------------------------------------------------------------------------------- the data set

def _clean_items(clean: Iterable[Union[np.ndarray, PathLike]] | PathLike,
                 names: Optional[Sequence[str]]) -> list[tuple[str, Union[np.ndarray, Path]]]:
    """(name, image or path) of each clean source; a folder gives its image files in natural order."""
    if isinstance(clean, (str, os.PathLike)):
        root = Path(clean)
        if not root.is_dir():
            raise DatasetError(f"{root}: clean image folder not found")
        items: list = [p.rainy for p in discover_pairs(root, layout="unpaired")]
    else:
        items = list(clean)
    if not items:
        raise DatasetError("no clean images given")
    if names is not None and len(names) != len(items):
        raise DatasetError(f"{len(names)} names for {len(items)} clean images")
    out = []
    for k, item in enumerate(items):
        name = str(names[k]) if names is not None else (f"{k + 1:04d}" if isinstance(item, np.ndarray)
                                                         else Path(item).stem)
        out.append((name, item if isinstance(item, np.ndarray) else Path(item)))
    if len({n for n, _ in out}) != len(out):
        raise DatasetError("two clean images share a name; pass distinct names")
    return out


def _fit(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Downscale (area) so the longer side is at most ``max_side``."""
    import cv2

    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _copy_real_pairs(source: PathLike, out: Path, limit: Optional[int]) -> dict[str, dict]:
    """Copy a real paired folder (any kit layout) into ``out/drs/{input,target}`` as PNG."""
    pairs = discover_pairs(source)
    if limit:
        pairs = pairs[:limit]
    record = {}
    for pair in pairs:
        if pair.clean is None:
            raise DatasetError(f"{source}: drs_from needs paired data; {pair.rainy} has no clean image")
        for side, path in (("input", pair.rainy), ("target", pair.clean)):
            dst = out / "drs" / side / f"{pair.id}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() == ".png" and not pair.is_side_by_side:
                shutil.copyfile(path, dst)
            else:
                rainy, clean = load_pair(pair)
                write_image(dst, rainy if side == "input" else clean)
        record[pair.id] = {"source": {"rainy": str(pair.rainy), "clean": str(pair.clean)}, "synthetic": False}
    return record


def make_rain_types(clean: Iterable[Union[np.ndarray, PathLike]] | PathLike, out_root: PathLike,
                    types: Sequence[str] = RAIN_TYPES, seed: int = 0,
                    ranges: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                    drs_from: Optional[PathLike] = None, drs_limit: Optional[int] = None,
                    max_side: Optional[int] = None, names: Optional[Sequence[str]] = None) -> Path:
    """Write the ``{type}/{input,target}`` layout from clean images (a folder, paths or arrays).

    Every clean image is rendered as every requested type; image k of type t is seeded by
    ``SeedSequence([seed, index of t in RAIN_TYPES, k])``, so adding images or types leaves the others
    unchanged. ``drs_from``: copy the day-streak pairs from that real paired folder (first ``drs_limit``)
    instead of rendering them. ``max_side``: downscale the clean images first. Writes ``rain_types.json``
    (generator version, seed, ranges, and per image its parameters and file sha256). Returns ``out_root``.
    """
    out = Path(out_root)
    unknown = [t for t in types if t not in RAIN_TYPES]
    if unknown or not types:
        raise ConfigError(f"rain types {list(types)}: expected a non-empty subset of {list(RAIN_TYPES)}")
    rg = _ranges(ranges)
    items = _clean_items(clean, names)
    images: dict[str, dict[str, dict]] = {t: {} for t in types}
    if drs_from is not None and "drs" in types:
        images["drs"] = _copy_real_pairs(drs_from, out, drs_limit)
    for k, (name, item) in enumerate(items):
        base = _fit(item.astype(np.float32) if isinstance(item, np.ndarray) else read_image(item), max_side)
        for t in types:
            if t == "drs" and drs_from is not None:
                continue
            seq = [int(seed), RAIN_TYPES.index(t), k]
            rainy, target, params = render(base, t, np.random.default_rng(np.random.SeedSequence(seq)), rg)
            paths = {side: out / t / side / f"{name}.png" for side in ("input", "target")}
            write_image(paths["input"], rainy)
            write_image(paths["target"], target)
            images[t][name] = {"seed_sequence": seq, "synthetic": True, "size": list(base.shape[:2]),
                               "source": str(item) if not isinstance(item, np.ndarray) else None,
                               "params": params, **{f"{s}_sha256": file_sha256(p) for s, p in paths.items()}}
    manifest = {"generator": "derainkit.data.rain_types", "version": GENERATOR_VERSION, "seed": int(seed),
                "types": list(types), "max_side": max_side, "drs_from": str(drs_from) if drs_from else None,
                "ranges": {g: {k: list(v) for k, v in r.items()} for g, r in rg.items()},
                "light_colours": {k: list(v) for k, v in LIGHT_COLOURS.items()}, "images": images}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


# ------------------------------------------------------------------------------------------- reading

def rain_type_pairs(root: PathLike, types: Optional[Sequence[str]] = None) -> dict[str, list[Pair]]:
    """The pairs of each type folder (``<root>/<type>/{input,target}``), in natural order.

    ``types`` None: every type folder that exists (at least one). A requested type without a folder,
    or a folder without pairs, is a DatasetError naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: rain-type data folder not found")
    wanted = list(types) if types is not None else [t for t in RAIN_TYPES if (root / t).is_dir()]
    if not wanted:
        raise DatasetError(f"{root}: no rain-type folders ({', '.join(RAIN_TYPES)}) with input/ and target/ inside")
    unknown = [t for t in wanted if t not in RAIN_TYPES]
    if unknown:
        raise ConfigError(f"unknown rain type(s) {unknown}; expected a subset of {list(RAIN_TYPES)}")
    out = {}
    for t in wanted:
        if not (root / t).is_dir():
            raise DatasetError(f"{root / t}: missing; the layout is <root>/{{{','.join(RAIN_TYPES)}}}/{{input,target}}")
        out[t] = discover_pairs(root / t, layout="mprnet")
    return out


def read_manifest(root: PathLike) -> dict:
    """The ``rain_types.json`` of a generated folder (DatasetError when there is none)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: not found (the folder was not written by make_rain_types)")
    return json.loads(path.read_text())


def write_type_examples(root: PathLike, out_path: PathLike, per_type: int = 2,
                        types: Optional[Sequence[str]] = None, dpi: int = 100) -> Path:
    """A PNG grid with one row per rain type: ``per_type`` (input, target) pairs side by side, labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = rain_type_pairs(root, types)
    cols = 2 * per_type
    fig = Figure(figsize=(2.2 * cols, 1.9 * len(pairs)), dpi=dpi)
    FigureCanvasAgg(fig)
    for row, (t, plist) in enumerate(pairs.items()):
        for j, pair in enumerate(plist[:per_type]):
            rainy, clean = load_pair(pair)
            for k, (img, side) in enumerate(((rainy, "input"), (clean, "target"))):
                ax = fig.add_subplot(len(pairs), cols, row * cols + 2 * j + k + 1)
                ax.imshow(np.clip(img, 0, 1))
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{t} {side} ({pair.id})", fontsize=7)
                if j == 0 and k == 0:
                    ax.set_ylabel(TYPE_NAMES[t], fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


__all__ = ["DROP_RANGES", "LIGHT_COLOURS", "MANIFEST", "NIGHT_RANGES", "RAIN_TYPES", "STREAK_RANGES", "TYPE_NAMES",
           "add_drops", "make_rain_types", "night_scene", "rain_type_pairs", "read_manifest", "render",
           "sensor_noise", "write_type_examples"]
