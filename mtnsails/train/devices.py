"""Where training runs: the device, torch's CPU threads, and the ranks of a torchrun/accelerate run.

Rank checks read the environment torchrun/accelerate set (RANK, WORLD_SIZE), so they work before
torch is imported; the rest import torch inside the function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mtnsails.core.errors import MtnsailsError

DEVICES = ("auto", "cpu", "cuda", "mps")


def device_flags(device: str) -> dict:
    """The `TrainingArguments` flags for `device` (one of DEVICES); mixed precision on a GPU."""
    import torch

    if device == "cpu":
        return {"use_cpu": True}
    if device == "cuda" and not torch.cuda.is_available():
        raise MtnsailsError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise MtnsailsError("--device mps: Apple's MPS is not available here (use --device cpu or auto)")
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` CPU threads for torch (None: leave them alone)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
