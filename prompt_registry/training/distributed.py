"""Joining the process group ``torchrun`` sets up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...)."""

from __future__ import annotations

import os

from ..errors import InvalidArgumentError


def join_from_env(device: str = "cpu") -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (gloo on CPU, NCCL on CUDA)
    unless it is already; returns (rank, world size). ``InvalidArgumentError`` outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise InvalidArgumentError("--distributed runs under torchrun, which sets RANK, WORLD_SIZE and MASTER_ADDR: "
                                   "torchrun --nproc_per_node N -m prompt_registry.cli ... --distributed")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def group_rank(what: str, command: str) -> int:
    """This process's rank in the initialised process group ``what`` (a config with
    ``distributed=True``) runs in; ``InvalidArgumentError`` naming ``command`` without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidArgumentError(f"{what} needs an initialised torch.distributed process group: run under torchrun "
                                   f"(`{command}`), or call torch.distributed.init_process_group first")
    return dist.get_rank()


def send_ids(ids: list[int]) -> None:
    """Rank 0 tells every rank the ids of what it stored (-1: nothing: it failed)."""
    import torch
    import torch.distributed as dist

    dist.broadcast(torch.tensor(ids, dtype=torch.int64), src=0)


def receive_ids(count: int) -> list[int]:
    """On a rank other than 0: the ``count`` ids rank 0 sends with ``send_ids``."""
    import torch
    import torch.distributed as dist

    ids = torch.full((count,), -1, dtype=torch.int64)
    dist.broadcast(ids, src=0)
    return [int(i) for i in ids.tolist()]
