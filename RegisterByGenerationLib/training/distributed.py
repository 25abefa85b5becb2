"""Multi-GPU training through ``torchrun`` and DistributedDataParallel.

Run ``torchrun --nproc_per_node N -m RegisterByGenerationLib.cli train all ...`` (or
``rbg`` through torchrun's ``--no-python``): torchrun starts N processes and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` joins them into a
process group (NCCL on CUDA, gloo on the CPU), gives each process its own GPU, and
returns a :class:`DistributedContext`. Without those variables it returns a single-process
context and nothing else changes.

Each process sees a different share of every epoch (``DistributedSampler``), DDP
averages the gradients, and only rank 0 preprocesses, validates, logs and writes
checkpoints; the others wait at a barrier.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError

__all__ = ["DistributedContext", "init_distributed", "wrap_ddp", "unwrap", "barrier", "all_reduce_mean", "broadcast_flag", "shutdown"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun prepared, if any.

    Args:
        device: the device asked for (``auto`` already resolved). Under torchrun a CUDA
            device becomes ``cuda:LOCAL_RANK``.

    Returns:
        The process's :class:`DistributedContext` (single process without torchrun).

    Raises:
        InputError: torchrun asked for more processes than there are GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun started {world_size} processes but this machine has {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def wrap_ddp(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``module`` in DistributedDataParallel when running distributed, else unchanged."""
    if not context.distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if context.distributed:
        dist.barrier()


def all_reduce_mean(value: float, context: DistributedContext) -> float:
    """Mean of a per-process number over all processes."""
    if not context.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "rank 0 failed, stop")."""
    if not context.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=context.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (no-op in a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
