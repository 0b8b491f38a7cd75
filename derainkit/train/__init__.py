"""Training: a strict, hashable `RunConfig`, a pure-function sampler, atomic resumable checkpoints.

    from derainkit.train import RunConfig, train
    cfg = RunConfig.from_dict({"model": "prenet", "iterations": 2000, "exemplar": "none"})
    result = train(cfg)                 # runs/prenet/<config hash>/: config.yaml, log.csv, model.safetensors ...
    train(cfg, resume=True)             # continue an interrupted run, bit-identically
"""
from __future__ import annotations

from derainkit.train.config import EXEMPLAR_POLICIES, RunConfig

__all__ = ["EXEMPLAR_POLICIES", "RunConfig", "RunResult", "train"]


def __getattr__(name: str):
    # The loop imports the models and data packages; load it only when asked for.
    if name in ("train", "RunResult"):
        from derainkit.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
