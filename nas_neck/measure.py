"""Latency, FLOPs and parameter counts of necks (and neck + head), measured the same way everywhere.

Latency is measured at batch 1 in eval mode under ``torch.inference_mode``, after warm-up, with an
explicit thread count (recorded in the result) so a measurement inside a Ray task
(``OMP_NUM_THREADS=1``) means the same as one on a laptop; in torch (on CUDA between CUDA events,
synchronised) or in onnxruntime (the module exported to ONNX as ``nas_neck.export.onnx`` writes
necks). Runs are spread over rounds on fresh copies of module and inputs, and summarised by their
10th percentile.

Figures comparable across processes come from :func:`measure_relative`: the module is timed
beside a reference in the same rounds of the same process, and reported as its ratio to the
reference times the reference's calibrated time (:func:`calibrated_ms`, measured once per machine
and settings and shared by every process through a file). FLOPs follow
``torch.utils.flop_counter``: 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import os
import platform
import random
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from filelock import FileLock
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nas_neck.device import available_cpus, default_device
from nas_neck.device import threads as num_threads  # `threads` is a keyword argument below
from nas_neck.errors import NasNeckError, WriteError, describe_os_error

__all__ = [
    "CALIBRATION_ROUNDS",
    "CALIBRATION_RUNS",
    "ONNX_OPSET",
    "Latency",
    "NeckWithHead",
    "RelativeLatency",
    "calibrate",
    "calibrated_ms",
    "count_flops",
    "count_params",
    "feature_inputs",
    "machine_key",
    "machine_load",
    "measure_latencies",
    "measure_latency",
    "measure_neck",
    "measure_relative",
]

log = logging.getLogger(__name__)

Inputs = Tensor | list[Tensor] | tuple[Any, ...]
Target = Literal["torch", "onnxruntime"]
Run = Callable[[], Any]  # one forward pass of one copy of a module on its inputs

ONNX_OPSET = 17  # the opset `nas_neck.export.onnx` writes necks with (a test keeps them equal)
CALIBRATION_RUNS = 200  # a reference is calibrated once per machine and settings: it can afford
CALIBRATION_ROUNDS = 20  # many runs and fresh copies
_METHOD = f"p10 over rounds of fresh copies; calibrated on {CALIBRATION_RUNS}/{CALIBRATION_ROUNDS}"
_LOAD_WINDOW_S = 60.0  # what the 1-minute load average averages over, about
_own_cpu: deque[tuple[float, float]] = deque([(time.monotonic(), time.process_time())], maxlen=64)
_busy_warned = False


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency summary in milliseconds, and the conditions it was measured under.

    ``p10_ms`` is the figure to compare: a process's runs are bimodal (where its tensors landed in
    memory) and slowed by whatever else runs on the machine, both of which only add time.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    threads: int
    device: str
    rounds: int = 1
    target: str = "torch"
    load_avg: float | None = None  # the 1-minute load average when the timing began
    busy: bool = False  # other work kept more than `threads` CPUs busy (`machine_load`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RelativeLatency:
    """A module's latency as a multiple of a reference's timed in the same rounds of one process.

    ``ratio`` is what agrees across processes; ``ms`` puts it in milliseconds of the reference's
    calibrated time, the same constant in every process of the machine and settings.
    """

    ratio: float
    reference_ms: float
    latency: Latency  # the module, as this process timed it
    reference: Latency  # the reference, timed in the same rounds

    @property
    def ms(self) -> float:
        return self.ratio * self.reference_ms


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
    target: Target = "torch",
) -> Latency:
    """Time ``module(inputs)`` at batch 1: p10, median (of round medians), p90 and mean in ms.

    One module of :func:`measure_latencies`; see there for the arguments.
    """
    return measure_latencies(
        [(module, inputs)],
        threads=threads,
        warmup=warmup,
        runs=runs,
        rounds=rounds,
        device=device,
        target=target,
    )[0]


def measure_latencies(
    modules: Sequence[tuple[nn.Module, Inputs]],
    *,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 100,
    rounds: int = 10,
    device: torch.device | str | None = None,
    target: Target = "torch",
) -> list[Latency]:
    """Time several ``module(inputs)`` interleaved: run i of each module before run i+1 of any.

    Whatever slows this process while it measures (other load, the clock) slows every module
    alike, so their ratios hold where their times drift. Each turn goes through the modules in a
    shuffled order (the same sequence in every process), so none always runs after the same
    other one. The runs are split into ``rounds``, each on fresh copies of every module and its
    inputs (torch: deep copies, onnxruntime: new sessions): one copy's timings are bimodal and
    stable (e.g. 3.9 or 6.5 ms, whatever the core), depending on where its tensors landed in
    memory, and fresh copies sample that layout effect inside one measurement
    (``experiments/bench_latency_stability.py``).

    Args:
        modules: (module, batch-1 inputs) pairs. Each module is put in eval mode and moved to
            ``device`` (torch) or to the CPU (onnxruntime, to export it), and left there. A
            tensor or a list of tensors (a neck's feature maps) is passed as the single
            argument, a tuple is unpacked into positional arguments.
        threads: CPU threads for torch, and onnxruntime's intra-op threads (inter-op 1,
            sequential execution), during the measurement (torch's restored afterwards); default
            :func:`~nas_neck.device.available_cpus`, never the inherited setting.
        warmup: untimed runs of each module at the start of each round (allocator, oneDNN /
            cuDNN selection; a fresh copy's first two runs are 10-20 % slow).
        runs: timed runs of each module in all (at least one per round).
        rounds: fresh copies of modules and inputs the runs are spread over.
        device: default :func:`~nas_neck.device.default_device`.
        target: ``"torch"``, or ``"onnxruntime"`` (the module exported to ONNX in memory; CUDA
            needs onnxruntime-gpu).
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    device = torch.device(device) if device is not None else default_device()
    n_threads = threads if threads is not None else available_cpus()
    rounds = min(rounds, runs)
    per_round = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    cuda = device if device.type == "cuda" and target == "torch" else None  # time by events
    times: list[list[float]] = [[] for _ in modules]
    medians: list[list[float]] = [[] for _ in modules]
    alive: list[Run] = []  # every round's copies stay alive, so the next ones land elsewhere
    order = random.Random(0)
    load_avg, busy = machine_load(n_threads)
    with num_threads(n_threads):
        copies = [_copies(m, x, target, n_threads, device) for m, x in modules]
        with torch.inference_mode():
            for n in per_round:
                current = [next(c) for c in copies]
                alive += current
                round_times = _time_interleaved(current, warmup, n, cuda, order)
                for t, m, r in zip(times, medians, round_times, strict=True):
                    t += r
                    m.append(statistics.median(r))
    results = [
        _summary(t, m, runs, n_threads, device, rounds, target, load_avg, busy)
        for t, m in zip(times, medians, strict=True)
    ]
    log.debug("latency of %s: %s", [type(m).__name__ for m, _ in modules], results)
    return results


def _summary(
    times: list[float],
    medians: list[float],
    runs: int,
    threads: int,
    device: torch.device,
    rounds: int,
    target: str,
    load_avg: float | None = None,
    busy: bool = False,
) -> Latency:
    times = sorted(times)
    return Latency(
        median_ms=statistics.median(medians),
        p10_ms=_percentile(times, 0.1),
        p90_ms=_percentile(times, 0.9),
        mean_ms=statistics.fmean(times),
        runs=runs,
        threads=threads,
        device=str(device),
        rounds=rounds,
        target=target,
        load_avg=load_avg,
        busy=busy,
    )


def machine_load(threads: int) -> tuple[float | None, bool]:
    """The 1-minute load average (None where the OS keeps none), and whether the machine is too
    busy for a latency timed on `threads` threads: the load of other work, the load average less
    this process's own CPU use over about the last minute (a search's training just before its
    next measurement is not other work), above `threads`. The first busy measurement of a
    process logs a warning.

    Timings under load read high and noisy, and their ratios to the reference drift (the latency
    predictor was 56 % within 10 % at load 6-9 on two CPUs, 100 % on a quiet machine)."""
    global _busy_warned
    if not hasattr(os, "getloadavg"):
        return None, False
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average here
        return None, False
    others = max(0.0, load - _own_share())
    busy = others > threads
    if busy and not _busy_warned:
        _busy_warned = True
        log.warning(
            "latency measured on a busy machine: 1-minute load average %.1f (%.1f of it other "
            "work) over the %d thread(s) timed; latencies read high and noisy (recorded with each "
            "trial as latency_busy); measure on a quieter machine to compare them",
            load,
            others,
            threads,
        )
    return load, busy


def _own_share() -> float:
    """The CPUs this process kept busy, on average, over about the last minute (since its oldest
    sample within reach: module import or an earlier measurement)."""
    now = (time.monotonic(), time.process_time())
    older = [s for s in _own_cpu if now[0] - s[0] >= _LOAD_WINDOW_S]
    since = older[-1] if older else _own_cpu[0]
    _own_cpu.append(now)
    wall = now[0] - since[0]
    return (now[1] - since[1]) / wall if wall > 1.0 else 0.0


def _time_interleaved(
    runs: list[Run], warmup: int, n: int, cuda: torch.device | None, order: random.Random
) -> list[list[float]]:
    """Times in ms of `n` turns over `runs`, each turn in an order drawn from `order`, after
    `warmup` untimed turns (one list per run): wall times, or with `cuda` (torch on a GPU) the
    time between CUDA events around each run, synchronised.
    """
    for _ in range(warmup):
        for run in runs:
            run()
    if cuda is not None:
        torch.cuda.synchronize(cuda)
    times: list[list[float]] = [[] for _ in runs]
    turn = list(range(len(runs)))
    for _ in range(n):
        order.shuffle(turn)
        for i in turn:
            times[i].append(_time_once(runs[i], cuda))
    return times


def _time_once(run: Run, cuda: torch.device | None) -> float:
    if cuda is not None:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(cuda)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3


def _copies(
    module: nn.Module, inputs: Inputs, target: Target, threads: int, device: torch.device
) -> Iterator[Run]:
    """Runs of `module` on `inputs`, a fresh copy of both at every ``next``."""
    if target == "torch":
        return _torch_copies(module.eval().to(device), _to_device(inputs, device))
    if target == "onnxruntime":
        tensors = _tensors(inputs)
        arrays = {f"input{i}": t.detach().cpu().numpy() for i, t in enumerate(tensors)}
        return _onnx_sessions(_onnx_model(module, tensors, inputs), arrays, threads, device)
    raise ValueError(f"latency target must be 'torch' or 'onnxruntime', got {target!r}")


def _torch_copies(module: nn.Module, inputs: Inputs) -> Iterator[Run]:
    """The module itself on its inputs first, then deep copies of both."""
    yield lambda: _call(module, inputs)
    while True:
        model, args = copy.deepcopy(module), _clone(inputs)
        yield lambda model=model, args=args: _call(model, args)


def _onnx_sessions(
    model: bytes, arrays: dict[str, Any], threads: int, device: torch.device
) -> Iterator[Run]:
    """A new onnxruntime session of `model` at every ``next``, with its own copy of the inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = _providers(device)
    while True:
        session = ort.InferenceSession(model, options, providers=providers)
        # the exporter drops inputs the graph does not use (a level a pruned neck ignores)
        feeds = {i.name: arrays[i.name].copy() for i in session.get_inputs()}
        yield lambda session=session, feeds=feeds: session.run(None, feeds)


def _providers(device: torch.device) -> list[str]:
    """onnxruntime's execution provider for `device`."""
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise NasNeckError(
            f"latency target onnxruntime on {device}: this onnxruntime has no {provider} "
            "(install onnxruntime-gpu, or time with the torch target)"
        )
    return [provider]


class _Positional(nn.Module):
    """``module(inputs)`` as ``forward(*tensors) -> tuple``, the signature ONNX exporters trace."""

    def __init__(self, module: nn.Module, like: Inputs) -> None:
        super().__init__()
        self.module = module
        self.kind = type(like)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        if self.kind is tuple:
            return _tensors(self.module(*tensors))
        return _tensors(self.module(list(tensors) if self.kind is list else tensors[0]))


def _onnx_model(module: nn.Module, tensors: tuple[Tensor, ...], like: Inputs) -> bytes:
    """`module` as an ONNX model in memory, exported as ``nas_neck.export.onnx`` writes necks
    (the TorchScript-based exporter, ``ONNX_OPSET``, dynamic batch and sides)."""
    names = [f"input{i}" for i in range(len(tensors))]
    axes = {
        n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} if t.ndim == 4 else {0: "batch"}
        for n, t in zip(names, tensors, strict=True)
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(module.eval().cpu(), like),
            tuple(t.cpu() for t in tensors),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=names,
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def _tensors(value: Any) -> tuple[Tensor, ...]:
    """The tensors in `value` (a tensor, or nested lists and tuples of them), in order."""
    if isinstance(value, Tensor):
        return (value,)
    return tuple(t for v in value for t in _tensors(v))


def _clone(inputs: Inputs) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.clone()
    if isinstance(inputs, tuple):
        return tuple(_clone(x) for x in inputs)
    if isinstance(inputs, list):
        return [_clone(x) for x in inputs]
    return inputs


def measure_relative(
    modules: Mapping[str, tuple[nn.Module, Inputs]],
    reference: tuple[nn.Module, Inputs],
    reference_ms: float,
    **timing: Any,
) -> dict[str, RelativeLatency]:
    """Each module's p10 over the reference's, timed interleaved in the same rounds, and in ms.

    Timing both in one process cancels what makes processes disagree (load on the machine, the
    CPU's clock, a process's speed state); the p10 ignores the slow mode of bimodal runs and
    runs slowed by other work, both of which only add time. ``reference_ms`` is the reference's
    calibrated time (:func:`calibrated_ms`). ``timing``: the keyword arguments of
    :func:`measure_latencies`.
    """
    ref, *latencies = measure_latencies([reference, *modules.values()], **timing)
    return {
        name: RelativeLatency(lat.p10_ms / ref.p10_ms, reference_ms, lat, ref)
        for name, lat in zip(modules, latencies, strict=True)
    }


def calibrate(module: nn.Module, inputs: Inputs, **timing: Any) -> float:
    """The p10 in ms of ``module(inputs)`` over ``CALIBRATION_RUNS`` runs in
    ``CALIBRATION_ROUNDS`` rounds: a reference's time, measured once per machine and settings.
    ``timing``: the other keyword arguments of :func:`measure_latencies`."""
    return measure_latency(
        module, inputs, runs=CALIBRATION_RUNS, rounds=CALIBRATION_ROUNDS, **timing
    ).p10_ms


def machine_key(
    threads: int, target: Target, device: torch.device | str | None = None
) -> dict[str, Any]:
    """What a latency depends on besides the module and its inputs: the processor (CPU model or
    GPU), device type, threads, target, library versions and this module's method."""
    device = torch.device(device) if device is not None else default_device()
    key: dict[str, Any] = {
        "processor": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "device": device.type,
        "threads": threads,
        "target": target,
        "torch": torch.__version__,
        "method": _METHOD,
    }
    if target == "onnxruntime":
        import onnxruntime as ort

        key["onnxruntime"] = ort.__version__
    return key


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibrated_ms(root: str | Path, key: Mapping[str, Any], measure: Callable[[], float]) -> float:
    """The calibrated time for `key`: read from `root`, else ``measure()`` once for all processes.

    One JSON file per key under ``root/latency/`` (named by the key's hash, the key inside), so
    other settings are another file. The first process to miss it calibrates under a file lock
    and writes it atomically; the others wait on the lock, then read it. An unreadable file, or
    one holding another key, is calibrated again.
    """
    key = json.loads(json.dumps(dict(key), sort_keys=True, default=str))  # as it reads back
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(root) / "latency"
    path = folder / f"reference-{digest}.json"
    if (ms := _read_calibration(path, key)) is not None:
        return ms
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(
            f"{folder}: cannot write the latency calibration: {describe_os_error(e)}"
        ) from None
    with FileLock(folder / f"reference-{digest}.lock"):
        if (ms := _read_calibration(path, key)) is not None:
            return ms
        ms = measure()
        _write_calibration(path, key, ms)
    log.info("latency reference calibrated: %.3f ms (%s)", ms, path)
    return ms


def _read_calibration(path: Path, key: dict[str, Any]) -> float | None:
    """The reference time stored at `path` for `key`, or None (missing, unreadable, other key)."""
    try:
        stored = json.loads(path.read_text())
        ms = float(stored["reference_ms"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable latency calibration (%s); calibrating again", path, e)
        return None
    if stored.get("key") != key or not (math.isfinite(ms) and ms > 0):
        log.warning("%s: holds another calibration; calibrating again", path)
        return None
    return ms


def _write_calibration(path: Path, key: dict[str, Any], ms: float) -> None:
    """Write the calibration atomically (a temporary file, then ``os.replace``)."""
    record = {
        "reference_ms": ms,
        "key": key,
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(
            f"{path}: cannot write the latency calibration: {describe_os_error(e)}"
        ) from None


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
    target: Target = "torch",
) -> dict[str, Latency]:
    """Latency of the neck on random backbone maps, and of neck + head when a head is given.

    Returns ``{"neck": Latency}`` or ``{"neck": ..., "neck+head": ...}`` (timed interleaved): the
    neck is what the search varies, neck + head what a deployment pays after the backbone.
    """
    inputs = feature_inputs(in_channels, in_strides, image_size)
    modules = {"neck": neck} | ({"neck+head": NeckWithHead(neck, head)} if head is not None else {})
    latencies = measure_latencies(
        [(m, inputs) for m in modules.values()],
        threads=threads,
        warmup=warmup,
        runs=runs,
        device=device,
        target=target,
    )
    return dict(zip(modules, latencies, strict=True))
