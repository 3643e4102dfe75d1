"""Device, mixed precision and CPU thread control, in one place so every caller agrees.

Ray sets ``OMP_NUM_THREADS=1`` inside its tasks and torch inherits it silently, which makes CPU
latency depend on where a measurement ran. Callers that time or train on CPU set the thread count
explicitly with :func:`threads`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["autocast_context", "available_cpus", "default_device", "threads"]


def default_device() -> torch.device:
    """CUDA (the current device) if available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the inherited torch setting.

    Counts logical CPUs of the mask; on machines with SMT this is twice the physical cores, which
    is what a user's deployment would see as well.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager:
    """AMP on CUDA (bf16 where supported, else fp16); a no-op context on CPU.

    CPU autocast (bf16) is slower than fp32 on most CPUs without AMX and changes numerics, so it
    is deliberately not used.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; restore the previous count afterwards."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
