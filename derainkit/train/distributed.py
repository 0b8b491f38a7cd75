"""Run DistributedDataParallel training without torchrun: ``launch_local(cfg, world_size=2)``.

torchrun is the way to train on several GPUs; this helper starts ``world_size`` local processes
itself (spawned, gloo on CPU or nccl on CUDA, one GPU per rank when there are enough), which is handy
for checking on a laptop that a multi-process run computes what a single process does.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.multiprocessing as mp

from derainkit.train.config import RunConfig


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, cfg: dict, kwargs: dict, threads: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    if threads:
        torch.set_num_threads(threads)
    from derainkit.train.loop import train

    result = train(RunConfig.from_dict(cfg), **kwargs)
    if rank == 0:
        queue.put(result.to_dict())


def launch_local(cfg: RunConfig, world_size: int = 2, threads_per_process: int = 1, **train_kwargs: Any) -> dict:
    """Train ``cfg`` in ``world_size`` spawned processes (as torchrun would) and return rank 0's
    ``RunResult.to_dict()``. ``train_kwargs`` go to ``train`` (resume, max_iterations_this_call, ...)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    train_kwargs.setdefault("progress", False)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(world_size, _free_port(), cfg.to_dict(), train_kwargs, threads_per_process, queue),
             nprocs=world_size, join=True)
    return queue.get()
