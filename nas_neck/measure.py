"""Latency, FLOPs and parameter counts of necks (and neck + head), measured the same way everywhere.

Latency is measured at batch 1 in eval mode under ``torch.inference_mode``, after warm-up, as the
median of many timed runs; on CPU with an explicit thread count (recorded in the result) so a
measurement inside a Ray task (``OMP_NUM_THREADS=1``) means the same as one on a laptop; on CUDA
with a synchronisation around every run. FLOPs follow ``torch.utils.flop_counter``: 2 FLOPs per
multiply-add.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nas_neck.device import available_cpus, default_device
from nas_neck.device import threads as num_threads  # `threads` is a keyword argument below

__all__ = [
    "Latency",
    "NeckWithHead",
    "count_flops",
    "count_params",
    "feature_inputs",
    "measure_latency",
    "measure_neck",
]

log = logging.getLogger(__name__)

Inputs = Tensor | list[Tensor] | tuple[Any, ...]


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency summary in milliseconds, and the conditions it was measured under."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    device: str
    rounds: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NeckWithHead(nn.Module):
    """``head(neck(features))``: lets neck and neck + head be timed and counted alike."""

    def __init__(self, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.neck = neck
        self.head = head

    def forward(self, features: list[Tensor]) -> Any:
        return self.head(self.neck(features))


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, list | tuple):
        return type(inputs)(_to_device(x, device) for x in inputs)
    return inputs


def _call(module: nn.Module, inputs: Inputs) -> Any:
    """A tuple is unpacked into positional arguments; a tensor or a list is one argument."""
    return module(*inputs) if isinstance(inputs, tuple) else module(inputs)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values, q in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(
    module: nn.Module,
    inputs: Inputs,
    *,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 100,
    rounds: int = 10,
    device: torch.device | str | None = None,
) -> Latency:
    """Time ``module(inputs)`` at batch 1; return the median (of round medians), p10, p90, mean in ms.

    The runs are split into ``rounds``, each on a fresh copy of the module and of the inputs. On
    this project's CPU machines one process's timing of a neck was bimodal (e.g. 3.9 or 6.5 ms,
    whatever the core, stable within the process): it depends on where its tensors landed in
    memory. Fresh copies sample that layout effect inside one measurement, so the median of the
    round medians agrees across processes (``experiments/bench_latency_stability.py``).

    Args:
        module: put in eval mode and moved to ``device`` (it is left there, in eval mode).
        inputs: batch-1 inputs; a tensor or a list of tensors (a neck's feature maps) is passed
            as the single argument, a tuple is unpacked into positional arguments.
        threads: CPU threads for torch during the measurement (restored afterwards); default
            :func:`~nas_neck.device.available_cpus`, never the inherited setting.
        warmup: untimed runs at the start of each round (allocator, oneDNN / cuDNN selection).
        runs: timed runs in all (at least one per round).
        rounds: fresh copies of module and inputs the runs are spread over.
        device: default :func:`~nas_neck.device.default_device`.
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    device = torch.device(device) if device is not None else default_device()
    n_threads = threads if threads is not None else available_cpus()
    module = module.eval().to(device)
    inputs = _to_device(inputs, device)
    rounds = min(rounds, runs)
    per_round = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    times: list[float] = []
    medians: list[float] = []
    copies: list[Any] = []  # kept alive so each round's copies land elsewhere in memory
    with num_threads(n_threads), torch.inference_mode():
        for n in per_round:
            model, args = (
                (module, inputs) if not copies else (copy.deepcopy(module), _clone(inputs))
            )
            copies.append((model, args))
            round_times = _time_runs(model, args, warmup, n, device)
            medians.append(statistics.median(round_times))
            times += round_times
    times.sort()
    result = Latency(
        median_ms=statistics.median(medians),
        p10_ms=_percentile(times, 0.1),
        p90_ms=_percentile(times, 0.9),
        mean_ms=statistics.fmean(times),
        runs=runs,
        threads=n_threads,
        device=str(device),
        rounds=rounds,
    )
    log.debug("latency of %s: %s", type(module).__name__, result)
    return result


def _time_runs(
    module: nn.Module, inputs: Inputs, warmup: int, runs: int, device: torch.device
) -> list[float]:
    """Wall times in ms of `runs` calls after `warmup` untimed ones (CUDA: events, synchronised)."""
    for _ in range(warmup):
        _call(module, inputs)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            _call(module, inputs)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            _call(module, inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _clone(inputs: Inputs) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.clone()
    if isinstance(inputs, tuple):
        return tuple(_clone(x) for x in inputs)
    if isinstance(inputs, list):
        return [_clone(x) for x in inputs]
    return inputs


def count_flops(module: nn.Module, inputs: Inputs) -> int:
    """FLOPs of one forward pass, counting 2 FLOPs per multiply-add (MAC), as torch does.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; cheap
    elementwise ops such as activations, norms and resizes count 0). Halve it for "MACs", the
    unit many papers call FLOPs.
    """
    module = module.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        _call(module, inputs)
    return int(counter.get_total_flops())


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def feature_inputs(
    channels: Sequence[int],
    strides: Sequence[int],
    image_size: int | tuple[int, int],
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Random batch-1 backbone maps of sizes ``ceil(S / stride)``, for timing a neck alone."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return [
        torch.randn(1, c, math.ceil(h / s), math.ceil(w / s), device=device)
        for c, s in zip(channels, strides, strict=True)
    ]


def measure_neck(
    neck: nn.Module,
    in_channels: Sequence[int],
    in_strides: Sequence[int],
    image_size: int | tuple[int, int],
    *,
    head: nn.Module | None = None,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 100,
    device: torch.device | str | None = None,
) -> dict[str, Latency]:
    """Latency of the neck on random backbone maps, and of neck + head when a head is given.

    Returns ``{"neck": Latency}`` or ``{"neck": ..., "neck+head": ...}``: the neck is what the
    search varies, neck + head what a deployment pays after the backbone.
    """
    inputs = feature_inputs(in_channels, in_strides, image_size)
    kwargs: dict[str, Any] = {"threads": threads, "warmup": warmup, "runs": runs, "device": device}
    result = {"neck": measure_latency(neck, inputs, **kwargs)}
    if head is not None:
        result["neck+head"] = measure_latency(NeckWithHead(neck, head), inputs, **kwargs)
    return result
