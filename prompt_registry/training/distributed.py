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
