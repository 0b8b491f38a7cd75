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

from derainkit.errors import DerainkitError, naming_file



def _add_model_args(ap: argparse.ArgumentParser, required: bool = True) -> None:
    ap.add_argument("--model", required=required, help="model name (see `derainkit models`)")
    ap.add_argument("--weights", type=Path, help="weights file (official .pth or kit .safetensors)")
    ap.add_argument("--config", default=None, help="model config overrides as JSON, e.g. '{\"stages\": 6}'")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    ap.add_argument("--tile", default="auto",
                    help="auto (tile only when the image does not fit memory), none, or a tile side in pixels")
    ap.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    ap.add_argument("--blend", choices=("linear", "average"), default="linear", help="how overlapping tiles mix")


def _predictor(args: argparse.Namespace):
    from derainkit.infer import load_predictor

    config = json.loads(args.config) if args.config else None
    return load_predictor(args.model, args.weights, config, device=args.device, tile=args.tile,
                          overlap=args.overlap, blend=args.blend)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from derainkit.data import discover_pairs, resolve_data_path
    from derainkit.metrics.evaluate import evaluate
    from derainkit.data import file_sha256

    args.data = resolve_data_path(args.data)
    pairs = discover_pairs(args.data, layout=args.layout)
    if args.limit:
        pairs = pairs[: args.limit]
    protocols = args.protocol or ["matlab-y"]
    meta: dict = {"data_layout": args.layout}
    if args.model:
        spec, predictor = _predictor(args)
        quantize = spec.official_quantize if args.quantize == "auto" else args.quantize
        weights = args.weights or spec.default_weights
        meta.update(model=args.model, weights=str(weights), weights_sha256=file_sha256(weights),
                    model_config=predictor.model.config.to_dict() if hasattr(predictor.model, "config") else None)
        device = str(predictor.device)

        predict = predictor.predict_fn()
    else:
        predict, quantize, device = None, ("round" if args.quantize == "auto" else args.quantize), "cpu"
        meta.update(model=None, note="rainy images scored as they are (no model)")
    out = args.out or Path("results") / "evaluate" / f"{args.model or 'input'}_{Path(args.data).resolve().name}"
    result = evaluate(pairs, predict, out, protocols, quantize=quantize,
                      save_dir=(Path(out) / "images") if args.save_images else None, data_root=args.data,
                      meta=meta, device=device)
    print(result.table())
    print(f"\n{result.n_images} images, quantize={quantize}; wrote {out}/per_image.csv, summary.json, summary.md, "
          f"manifest.csv")
    return 0


def cmd_derain(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from derainkit.data import discover_pairs
    from derainkit.io import is_image_file, load_image, write_image

    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        jobs = [(p.rainy, dst / (p.id + ".png")) for p in discover_pairs(src, layout="unpaired")]
    elif src.is_file():
        if not is_image_file(src):
            raise DerainkitError(f"{src}: not an image file (expected .png, .jpg, .jpeg, .tif, .tiff or .bmp)")
        target = dst if dst.suffix.lower() in (".png", ".tif", ".tiff") else dst / (src.stem + ".png")
        jobs = [(src, target)]
    else:
        raise DerainkitError(f"{src}: no such file or folder")
    spec, predictor = _predictor(args)
    records = []
    for path, target in tqdm(jobs, desc="derain", unit="img", disable=len(jobs) == 1):
        img = load_image(path)
        out, plan = naming_file(path, lambda: predictor(img.pixels, progress=True))
        depth = img.bit_depth if args.bit_depth == "auto" else int(args.bit_depth)
        write_image(target, out, bit_depth=depth)
        records.append({"input": str(path), "output": str(target), "height": out.shape[0], "width": out.shape[1],
                        "bit_depth": depth, "exif_orientation_applied": img.orientation, "tiling": plan.to_dict()})
        print(f"{path} -> {target} ({out.shape[1]}x{out.shape[0]}, {depth}-bit, "
              f"{'whole image' if plan.tile is None else f'tiles {plan.tile}px overlap {plan.overlap}'})")
    from derainkit.provenance import provenance

    log = (dst if src.is_dir() or not dst.suffix else dst.parent) / "derain_log.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({"model": args.model, "weights": str(args.weights or spec.default_weights),
                               "images": records, "provenance": provenance(predictor.device)}, indent=2) + "\n")
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

    ap = argparse.ArgumentParser(prog="derainkit", description="Deraining reproducibility kit")
    sub = ap.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="score a model (or the rainy images themselves) on a paired dataset")
    _add_model_args(ev, required=False)
    ev.add_argument("--data", required=True,
                    help="dataset folder (any supported layout), or 'embedded[:test|train]' for the built-in set")
    ev.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS, help="dataset layout (default: detect)")
    ev.add_argument("--protocol", action="append", choices=tuple(PROTOCOLS),
                    help="metric protocol (repeatable; default matlab-y)")
    ev.add_argument("--quantize", choices=("auto", "round", "trunc"), default="auto",
                    help="float output -> uint8 before uint8 protocols; auto = what the model's official test did")
    ev.add_argument("--limit", type=int, default=0, help="score only the first N pairs (natural order)")
    ev.add_argument("--save-images", action="store_true", help="also write the derained images")
    ev.add_argument("--out", type=Path, help="output folder (default results/evaluate/<model>_<data>)")
    ev.set_defaults(func=cmd_evaluate)

    de = sub.add_parser("derain", help="derain one image or a folder of images (no ground truth needed)")
    de.add_argument("input", type=Path, help="an image file or a folder of images")
    de.add_argument("output", type=Path, help="output .png/.tif file, or a folder")
    _add_model_args(de)
    de.add_argument("--bit-depth", choices=("auto", "8", "16"), default="auto",
                    help="output bit depth; auto = same as the input")
    de.set_defaults(func=cmd_derain)

    from derainkit.train.cli import add_train_parser

    add_train_parser(sub)

    mo = sub.add_parser("models", help="list the available models")
    mo.set_defaults(func=cmd_models)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DerainkitError as exc:
        print(f"derainkit: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"derainkit: error: --config is not valid JSON ({exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
