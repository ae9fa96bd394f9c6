"""Data-parallel training with ``torch.distributed``: what the trainer needs to run as one of N ranks.

Launching is torchrun's job (``torch.distributed.run``: ``neolabel train --nproc N``, ``torchrun
--nproc-per-node N --no-python neolabel train …``, or several nodes with its rendezvous flags); it
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and the
trainer joins the process group from them (:func:`init_from_env`): NCCL on CUDA, gloo on CPU.

* Data: every rank pre-processes and samples only its shard of the trainable subjects
  (:func:`shard`: every ``world``-th one, starting at its rank), with its own sampling seed
  (:func:`rank_seed`); the same seed and world size give the same run.
* Gradients: ``DistributedDataParallel`` all-reduces them by *averaging* over ranks, so a step
  optimises the mean of the ranks' losses. The masked Dice+CE pools a batch before dividing (batch
  Dice, CE per annotated voxel), so N ranks × batch b is the mean of N pooled losses, not one pooled
  loss over N·b patches; with b = 1 that is the mean of per-patch losses.
* Normalisation: the network uses instance norm (per patch, no running statistics), so there is no
  batch statistic to synchronise and no SyncBatchNorm.
* Validation, checkpoints, TensorBoard and ``train_config.json`` are rank 0's; decisions that end the
  run (time limit, callback) are rank 0's and broadcast, so every rank runs the same epochs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")

# Rank 0 validates and saves while the others wait at the next collective: allow long validations.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank; ``owns_group`` if it created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> DistContext:
    """Rank and world size from torchrun's environment (single process when it is absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(rank=int(os.environ.get("RANK", "0")), world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def init_from_env(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join (or reuse) the process group torchrun described; the rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    ctx = env_context()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device.type), timeout=PROCESS_GROUP_TIMEOUT)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), ctx.local_rank, owns), device


def shutdown(ctx: DistContext) -> None:
    """Wait for every rank (rank 0 may still be saving), then leave the group if this process made it."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share: every ``world_size``-th item from ``rank``; with fewer items than ranks, one reused."""
    if world_size <= 1:
        return list(items)
    if not items:
        return []
    if len(items) < world_size:
        return [items[rank % len(items)]]
    return list(items[rank::world_size])


def rank_seed(seed: int, rank: int, world_size: int) -> int:
    """The sampling seed of a rank: ``seed`` itself in a single process (so that run is unchanged)."""
    if world_size <= 1:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank), int(world_size)]).generate_state(1)[0] & 0x7FFFFFFF)


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed (broadcasts rank 0's weights), else itself."""
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def all_sum(value: float, ctx: DistContext, device: torch.device) -> float:
    """Sum of ``value`` over ranks (``value`` itself in one process)."""
    if not ctx.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_mean(value: float, ctx: DistContext, device: torch.device) -> float:
    """Mean of ``value`` over ranks."""
    return all_sum(value, ctx, device) / max(ctx.world_size, 1)


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (decisions that end the run must be the same everywhere)."""
    if not ctx.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def torchrun_command(nproc_per_node: int, module_args: Sequence[str], standalone: bool = True) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m …``: torchrun's own launcher.

    ``--standalone`` is one node with a rendezvous on a free local port; several nodes use torchrun
    directly with ``--nnodes`` and ``--rdzv-endpoint`` (docs/scale.md).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if standalone:
        cmd.append("--standalone")
    return [*cmd, f"--nproc-per-node={int(nproc_per_node)}", "-m", *module_args]


def run_torchrun(nproc_per_node: int, module_args: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Run ``module_args`` as ``nproc_per_node`` ranks and wait; ``CalledProcessError`` if a rank failed.

    A subprocess (not ``torch.distributed.run.main`` in this process) so it also works from a server's
    worker thread, where torchrun's signal handlers cannot be installed.
    """
    subprocess.run(torchrun_command(nproc_per_node, module_args), check=True, env={**os.environ, **(env or {})})
