"""Thin helpers over torch.distributed that also work in a single, non-distributed process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed() -> tuple[torch.device, int, int]:
    """Initialise the process group when launched by torchrun, else fall back to one process.

    Returns ``(device, rank, world_size)``. NCCL on GPUs, gloo on CPU.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            device = torch.device("cpu")
            backend = "gloo"
        if not is_dist():
            dist.init_process_group(backend=backend)
        return device, dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return device, 0, 1


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0 (rank order); no gradient.

    Every process must pass a tensor of the same shape. Identity without a process group.
    """
    if not is_dist():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it; identity without a group."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast ``tensor`` in place from ``src``; identity without a process group."""
    if is_dist():
        dist.broadcast(tensor, src=src)
    return tensor


def barrier() -> None:
    """Wait until every process arrives here; nothing without a process group."""
    if is_dist():
        dist.barrier()
