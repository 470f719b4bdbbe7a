"""torchrun / DDP set-up: gloo on CPU, nccl on CUDA; a single process needs none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agreed_signal(self, received: list[int]) -> int:
        """The signal any process received (0: none), the same on every process, so that all
        stop after the same step (one scalar all-reduce and a host synchronisation: the trainer
        asks on the steps it logs; nothing without DDP)."""
        mine = received[0] if received else 0
        if not self.enabled:
            return mine
        flag = torch.tensor([mine], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or run as one process.

    ``device`` defaults to CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialized_here = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        initialized_here = True
    return DistributedContext(rank, world_size, device, initialized_here)
