"""Command line: `derainkit evaluate`, `derainkit derain`, `derainkit train`, `derainkit models`.

Every command reports bad input (missing folders, unreadable images, mismatched pairs, wrong
weights) as one line naming the file and the problem, with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from derainkit.errors import DerainkitError, OneLineParser



MAX_CONFIG_TEXT = 65536  # bytes of --config JSON accepted (a model config is a few hundred)


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _tile(text: str) -> int | str:
    """argparse type: auto, none, or a tile side of at least MIN_TILE pixels."""
    from derainkit.infer.tiling import MIN_TILE

    if text in ("auto", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, none or a tile side in pixels") from None
    if value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"{value}: a tile side must be at least {MIN_TILE} px")
    return value


def _add_model_args(ap: argparse.ArgumentParser, required: bool = True) -> None:
    ap.add_argument("--model", required=required, help="model name (see `derainkit models`)")
    ap.add_argument("--weights", type=Path, help="weights file (official .pth or kit .safetensors)")
    ap.add_argument("--config", default=None, help="model config overrides as JSON, e.g. '{\"stages\": 6}'")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    ap.add_argument("--tile", default="auto", type=_tile,
                    help="auto (tile only when the image does not fit memory), none, or a tile side in pixels")
    ap.add_argument("--overlap", type=_count, default=32, help="tile overlap in pixels")
    ap.add_argument("--blend", choices=("linear", "average"), default="linear", help="how overlapping tiles mix")
    ap.add_argument("--max-pixels", type=_count, default=None,
                    help="refuse images whose header declares more pixels (default 250e6, or $DERAINKIT_MAX_PIXELS)")


def _model_config(args: argparse.Namespace) -> dict | None:
    if not args.config:
        return None
    if len(args.config) > MAX_CONFIG_TEXT:
        raise DerainkitError(f"--config: {len(args.config)} characters is too long for a model config")
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise DerainkitError(f"--config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DerainkitError(f"--config must be a JSON object of model config keys, e.g. '{{\"k\": 7}}', "
                             f"got {type(config).__name__}")
    return config


def _predictor(args: argparse.Namespace):
    from derainkit.infer import load_predictor

    if isinstance(args.tile, int) and args.overlap * 2 >= args.tile:
        raise DerainkitError(f"--overlap {args.overlap} must be less than half of --tile {args.tile}")
    return load_predictor(args.model, args.weights, _model_config(args), device=args.device, tile=args.tile,
                          overlap=args.overlap, blend=args.blend)


def _apply_max_pixels(args: argparse.Namespace) -> None:
    import os

    from derainkit.io import MAX_PIXELS_ENV

    if getattr(args, "max_pixels", None):
        os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from derainkit.data import discover_pairs, file_sha256, resolve_data_path
    from derainkit.infer.folder import probe_writable
    from derainkit.metrics.evaluate import evaluate

    _apply_max_pixels(args)
    args.data = resolve_data_path(args.data)
    pairs = discover_pairs(args.data, layout=args.layout)
    if args.limit:
        pairs = pairs[: args.limit]
    protocols = args.protocol or (["matlab-y"] if all(p.clean is not None for p in pairs) else ["niqe"])
    out = args.out or Path("results") / "evaluate" / f"{args.model or 'input'}_{Path(args.data).resolve().name}"
    meta: dict = {"data_layout": args.layout}
    if args.model:
        spec, predictor = _predictor(args)
        quantize = spec.official_quantize if args.quantize == "auto" else args.quantize
        weights = args.weights or spec.default_weights
        meta.update(model=args.model, weights=str(weights), weights_sha256=file_sha256(weights),
                    model_config=predictor.model.config.to_dict() if hasattr(predictor.model, "config") else None)
        predict, device = predictor.predict_fn(), str(predictor.device)
    else:
        predict, quantize, device = None, ("round" if args.quantize == "auto" else args.quantize), "cpu"
        meta.update(model=None, note="rainy images scored as they are (no model)")
    probe_writable(Path(out))  # after the model and weights are checked: a refused command leaves no folder
    result = evaluate(pairs, predict, out, protocols, quantize=quantize,
                      save_dir=(Path(out) / "images") if args.save_images else None, data_root=args.data,
                      meta=meta, device=device)
    print(result.table())
    print(f"\n{result.n_images} images, quantize={quantize}; wrote {out}/per_image.csv, summary.json, summary.md, "
          f"manifest.csv")
    return 0


def _rain_predictor(args: argparse.Namespace, predictor):
    """A predictor of the model's rain layer (``<stem>_rain.png``), for layer-separating models (NLCL)."""
    from derainkit.infer import Predictor

    layer = getattr(predictor.model, "rain_layer", None)
    if layer is None:
        raise DerainkitError(f"--layers: model {args.model!r} does not separate a rain layer (NLCL does)")
    return Predictor(layer(), predictor.bytes_per_pixel, device=predictor.device, tile=args.tile,
                     overlap=args.overlap, blend=args.blend, label=f"{predictor.label}, rain layer",
                     whole_frame_norm=predictor.whole_frame_norm)


def cmd_derain(args: argparse.Namespace) -> int:
    from derainkit.data import file_sha256
    from derainkit.infer.folder import DerainLog, derain_jobs, plan_jobs, probe_writable
    from derainkit.provenance import provenance

    _apply_max_pixels(args)
    jobs, folder = plan_jobs(Path(args.input), Path(args.output), extra_suffixes=("rain",) if args.layers else ())
    probe_writable(folder)  # before the model is loaded: a read-only folder fails now, not after inference
    log = DerainLog(folder)
    spec, predictor = _predictor(args)
    rain = _rain_predictor(args, predictor) if args.layers else None
    weights = args.weights or spec.default_weights
    config = predictor.model.config.to_dict() if hasattr(predictor.model, "config") else _model_config(args)
    settings = {"model": args.model, "weights_sha256": file_sha256(weights), "model_config": config,
                "tile": args.tile, "overlap": args.overlap, "blend": args.blend, "bit_depth": args.bit_depth,
                "layers": bool(args.layers)}
    run = {"model": args.model, "weights": str(weights), "settings": settings,
           "provenance": provenance(predictor.device)}

    def predict(pixels):
        out, plan = predictor(pixels, progress=True)
        outs = {"derained": out}
        if rain is not None:
            outs["rain"] = rain(pixels, progress=True)[0]
        return outs, plan

    counts = derain_jobs(jobs, predict, log, run, bit_depth=args.bit_depth)
    if counts["skipped"]:
        print(f"{counts['skipped']} image(s) already derained with these settings (see {log.path}); skipped")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from derainkit.models import MODELS

    for name, spec in sorted(MODELS.items()):
        shipped = f" (ships weights: {spec.default_weights.name})" if spec.default_weights else ""
        print(f"{name:10s} {spec.description}{shipped}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from derainkit.data.layouts import LAYOUTS
    from derainkit.metrics.protocols import PROTOCOLS

    ap = OneLineParser(prog="derainkit", description="Deraining reproducibility kit")
    sub = ap.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="score a model (or the rainy images themselves): full-reference on a paired "
                                         "dataset, NIQE on photos without ground truth")
    _add_model_args(ev, required=False)
    ev.add_argument("--data", required=True,
                    help="dataset folder (any supported layout), or 'embedded[:test|train]' for the built-in set")
    ev.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS, help="dataset layout (default: detect)")
    ev.add_argument("--protocol", action="append", choices=(*PROTOCOLS, "niqe"),
                    help="metric protocol (repeatable; default matlab-y, or niqe for photos without ground truth)")
    ev.add_argument("--quantize", choices=("auto", "round", "trunc"), default="auto",
                    help="float output -> uint8 before uint8 protocols; auto = what the model's official test did")
    ev.add_argument("--limit", type=_count, default=0, help="score only the first N pairs (natural order; 0: all)")
    ev.add_argument("--save-images", action="store_true", help="also write the derained images")
    ev.add_argument("--out", type=Path, help="output folder (default results/evaluate/<model>_<data>)")
    ev.set_defaults(func=cmd_evaluate)

    de = sub.add_parser("derain", help="derain one image or a folder of images (no ground truth needed)")
    de.add_argument("input", type=Path, help="an image file or a folder of images")
    de.add_argument("output", type=Path, help="output .png/.tif file, or a folder")
    _add_model_args(de)
    de.add_argument("--bit-depth", choices=("auto", "8", "16"), default="auto",
                    help="output bit depth; auto = same as the input")
    de.add_argument("--layers", action="store_true",
                    help="also write the rain layer as <name>_rain.png (models that separate one, e.g. nlcl)")
    de.set_defaults(func=cmd_derain)

    from derainkit.train.cli import add_train_parser

    add_train_parser(sub)

    mo = sub.add_parser("models", help="list the available models")
    mo.set_defaults(func=cmd_models)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return int(exc.code or 0)
    try:
        return args.func(args)
    except DerainkitError as exc:
        print(f"derainkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
