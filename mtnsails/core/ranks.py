"""Which process of a torchrun/accelerate run this is.

Rank checks read the environment torchrun/accelerate set (RANK, WORLD_SIZE), so they work before
torch is imported; waiting for the other ranks imports torch inside the function.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """How many processes train together (1 without torchrun/accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """False on the other ranks of a torchrun/accelerate run (only rank 0 writes files and prints)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish_distributed() -> None:
    """End a torchrun/accelerate run's process group; a process that exits with it still open
    can abort ("terminate called without an active exception"). `save_model` has already waited
    for every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
