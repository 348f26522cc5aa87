"""Distributed data parallel set-up: which rank this process is, barriers, gathering results.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) or with ``nproc > 1`` (processes
spawned by :func:`oaimodels.training.run.train_run`), one process per device trains a
``DistributedDataParallel`` model on its shard of every epoch's draws; only rank 0 writes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_dist() -> Dist:
    """This process's place in a ``torchrun`` job (a single process outside one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def barrier(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """``model`` wrapped for data-parallel training when ``d`` is a multi-process job."""
    if not d.active:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def reduce_epoch(d: Dist, model: nn.Module, totals: torch.Tensor) -> None:
    """Sum ``totals`` over ranks and give every rank rank 0's buffers (in place)."""
    if not d.active:
        return
    dist.all_reduce(totals)  # on the device: NCCL reduces CUDA tensors only
    # BatchNorm running statistics drift apart on each rank; validate and save rank 0's
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def gather_rows(d: Dist, items: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's ``(items, logits)`` shard, concatenated in item order."""
    if not d.active:
        return items, logits
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, (items, logits))
    all_items = np.concatenate([p[0] for p in parts])
    all_logits = np.concatenate([p[1] for p in parts])
    order = np.argsort(all_items, kind="stable")
    return all_items[order], all_logits[order]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
