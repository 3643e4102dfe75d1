"""Device, mixed precision and CPU thread control, in one place so every caller agrees.

Ray sets ``OMP_NUM_THREADS=1`` inside its tasks and torch inherits it silently, which makes CPU
latency depend on where a measurement ran. Callers that time or train on CPU set the thread count
explicitly with :func:`threads`.

Precision (``TrainConfig.precision``) is resolved once per training run by
:func:`resolve_precision` and applied by :func:`autocast_context`. CPU bf16 autocast pays where
the CPU has bf16 in hardware: on a 2-vCPU AMD EPYC VM with AVX512-BF16 (torch 2.14) one PAFPN
training step (batch 16 at 256 px, neck + head forward and backward, 35 GFLOP) took 150 ms in
fp32 and 96 ms in bf16, 1.5x (FPN 1.7x, BiFPN 1.3x; channels_last gave nothing). Without it
(AVX512-BF16 or AMX on x86, BF16 on Arm) oneDNN emulates bf16, which gains little or is slower
than fp32, so ``auto`` picks bf16 only where the CPU has it natively.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "CPU_BF16_ENV",
    "Precision",
    "autocast_context",
    "available_cpus",
    "cpu_has_native_bf16",
    "default_device",
    "resolve_precision",
    "threads",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# x86: AVX512-BF16 and AMX-BF16; Arm: the BF16 extension (torch.cpu names / /proc/cpuinfo names).
_BF16_CAPABILITIES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "svebf16"})
_CPUINFO = Path("/proc/cpuinfo")
# Take the CPU's bf16 as native or emulated whatever it has: what `precision auto` resolves to.
CPU_BF16_ENV = "NAS_NECK_CPU_BF16"
_FORCED_BF16 = {"native": True, "emulated": False}


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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16, AMX-BF16, Arm BF16).

    Read from ``torch.cpu.get_capabilities()`` (CPUID, torch >= 2.9), else from the flags in
    /proc/cpuinfo. ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not used: it is true on
    any AVX-512 CPU, where oneDNN only emulates bf16.
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        caps = get_capabilities()
        return any(caps.get(name) is True for name in _BF16_CAPABILITIES)
    return bool(_cpu_flags() & _BF16_CPU_FLAGS)


def _cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:  # not Linux
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """The arithmetic a ``TrainConfig.precision`` means on `device`: fp32, bf16 or fp16 autocast.

    ``auto``: on CUDA, AMP (bf16 where the GPU has it natively, else fp16); on a CPU with native
    bf16, bf16 autocast (1.3-1.7x faster training steps, see the module docstring); fp32
    otherwise. An explicit ``bf16`` is honoured everywhere, with a warning (once) where it is
    emulated. ``fp16`` (what ``auto`` gives on older GPUs) is CUDA only. ``$NAS_NECK_CPU_BF16``
    (``native`` or ``emulated``) overrides what the CPU is taken to have.
    """
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        if _native_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        if device.type in ("cpu", "cuda") and not _native_bf16(device):
            _warn_once(
                f"precision bf16: this {device.type.upper()} has no native bf16, so it is emulated "
                "and likely no faster than fp32 (precision auto would pick fp32 here)"
            )
        return "bf16"
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 is for CUDA only, not {device.type}; use bf16")
        return "fp16"
    raise ValueError(f"precision: expected fp32, bf16 or auto, got {precision!r}")


def _native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (not emulated); on CPU, `CPU_BF16_ENV` set to
    ``native`` or ``emulated`` overrides the check (the test suite runs both paths that way)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not forced:
        return cpu_has_native_bf16()
    if forced not in _FORCED_BF16:
        raise ValueError(f"${CPU_BF16_ENV}: expected native or emulated, got {forced!r}")
    return _FORCED_BF16[forced]


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def autocast_context(
    device: torch.device | str, precision: str = "fp32"
) -> contextlib.AbstractContextManager:
    """Autocast to `precision` (a ``TrainConfig.precision`` or a resolved one) on `device`; a
    no-op context for fp32."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[resolved])


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
