"""This process's place in a torchrun job, and the process group it joins (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistributedContext | None:
    """The torchrun environment, or None for a plain process (or a torchrun job of one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return DistributedContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the process that reports and saves."""
    ctx = distributed_context()
    return ctx is None or ctx.is_main


def init_distributed(device: torch.device) -> None:
    """Join the torchrun job's process group (once per process): nccl between GPUs, gloo on CPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def finish_distributed() -> None:
    """Leave the process group, if this process joined one (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(requested: str | None, ctx: DistributedContext) -> torch.device:
    """Under torchrun each process drives the GPU of its local rank; CPU ranks share the machine."""
    import torch

    from arcast_core.runtime import pick_device

    device = pick_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of ``values`` over every rank, identical on all of them."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()
