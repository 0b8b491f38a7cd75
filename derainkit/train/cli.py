"""`derainkit train`: train a model from a run config, resumably.

    derainkit train runs/msgnn.yaml                          # a YAML/JSON RunConfig
    derainkit train --model prenet --set iterations=2000 --set exemplar=none
    derainkit train cfg.yaml --set model_config.k=7 --set lr=1e-4
    derainkit train --resume runs/prenet/3f1c9a0b2e7d        # continue an interrupted run
    torchrun --nproc_per_node 2 -m derainkit.train.cli cfg.yaml   # DistributedDataParallel

Also runnable as ``python -m derainkit.train.cli``. Bad input (unknown config keys, missing data
folders, a checkpoint of another run) is reported in one line with exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

from derainkit.errors import CheckpointError, ConfigError, DerainkitError, OneLineParser

_EPILOG = """examples:
  derainkit train --model prenet --set iterations=2000 --set exemplar=none
  derainkit train run.yaml --set model_config.k=7
  derainkit train --resume runs/prenet/3f1c9a0b2e7d
"""


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` command (``func=cmd_train``) on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a model (resumable; MSGNN paper recipe by default)",
        description="Train a model from a run config. The run folder is <out_dir>/<config hash>/.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_train)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, help="run config file (YAML or JSON)")
    p.add_argument("--model", help="model to train (without CONFIG: the defaults for everything else)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable; YAML values; nested: model_config.k=7)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the latest checkpoint (of RUN_DIR, or of this config's run folder); "
                        "'--resume auto': continue when this config's run folder has one, else start it "
                        "(the same command every sitting)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a checkpoint of a different config (starts a new run folder)")
    p.add_argument("--out", help="output folder for runs (config key out_dir; default runs/<model>)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (config key device)")
    p.add_argument("--max-iterations", type=int, default=None, metavar="N",
                   help="stop after N iterations in this call (a checkpoint is written; resume later)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and its hash, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace):
    """The RunConfig the arguments describe (CONFIG, --model or the resumed run's config.yaml, then --set)."""
    from derainkit.train.config import RunConfig

    resume_dir = Path(args.resume) if isinstance(args.resume, str) and args.resume != "auto" else None
    if args.config is not None:
        cfg = RunConfig.from_file(args.config)
    elif resume_dir is not None:
        run_dir = resume_dir.parent.parent if resume_dir.is_file() else resume_dir
        if not run_dir.is_dir():
            raise CheckpointError(f"{resume_dir}: run folder not found")
        path = run_dir / "config.yaml"
        if not path.is_file():
            raise CheckpointError(f"{run_dir}: no config.yaml (is it a run folder?); pass the run's config file too")
        cfg = RunConfig.from_file(path)
    elif args.model:
        from derainkit.models import get_model_spec

        cfg = RunConfig.from_dict({"model": args.model, **get_model_spec(args.model).run_recipe()})  # its paper's
    else:
        raise ConfigError("nothing to train: give a run config file, --model NAME, or --resume RUN_DIR")
    overrides = list(args.overrides)
    if args.model and args.config is not None:
        overrides.insert(0, f"model={args.model}")
    cfg = cfg.with_overrides(overrides) if overrides else cfg
    changes = {}
    if args.out:
        changes["out_dir"] = str(args.out)
    if args.device:
        changes["device"] = args.device
    return dataclasses.replace(cfg, **changes) if changes else cfg


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``derainkit train``; returns the exit status (0 done or stopped as asked, 2 bad input)."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = resolve_config(args)
        if args.print_config:
            import yaml

            print(f"# config hash {cfg.config_hash()}; run folder {cfg.run_dir()}")
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from derainkit.train.checkpoint import LATEST
        from derainkit.train.loop import train

        if args.resume == "auto":
            args.resume = (cfg.run_dir() / "checkpoints" / LATEST).is_file()
        if is_main:
            print(f"run {cfg.config_hash()} ({cfg.model}) -> {cfg.run_dir()}", flush=True)
        result = train(cfg, resume=args.resume, progress=not args.no_progress,
                       max_iterations_this_call=args.max_iterations, allow_config_change=args.allow_config_change)
    except DerainkitError as exc:
        print(f"derainkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("derainkit: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    if is_main:
        state = "finished" if result.finished else "stopped (resume with --resume)"
        print(f"run folder: {result.run_dir}")
        print(f"{state} at iteration {result.iteration}/{result.total_iterations}; checkpoint {result.checkpoint}")
        for proto, m in result.metrics.items():
            base = result.input_metrics.get(proto, {})
            print(f"  {proto}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} "
                  f"(input {base.get('psnr', float('nan')):.2f} dB, {base.get('ssim', float('nan')):.4f})")
        if result.weights:
            print(f"weights: {result.weights}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m derainkit.train.cli`` (and torchrun): the same arguments as ``derainkit train``."""
    ap = OneLineParser(prog="derainkit train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(ap)
    return cmd_train(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
