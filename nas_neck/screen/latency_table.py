"""Predict a neck's latency from a per-machine table of its steps, without timing the neck.

A neck is a sequence of steps, each one module `GraphNeck` builds: every extra level's resample,
and per node every input edge's resample, the fusion and the block (and the fixed head, in
detector scope). A step is identified by what its cost depends on: its kind and op, channels in
and out, levels and spatial sizes (so one table serves every architecture of the input size). Its
latency is timed once, in the units of `ProxyTask.cost`: beside the reference neck in the same
rounds, as a ratio to the reference's p10 times its calibrated time, in the latency target,
threads and device of the proxy task, each step on its own (so its time carries to any neck).
A whole neck costs more than its steps timed apart: inside a neck, fresh allocations fault in new
pages and weights and activations miss the caches, which repeating one step hides (a C2f
PAFPN's steps sum to a third of the neck on a 2-core VM); plus glue between modules, or
onnxruntime's per-session overhead. That overhead is fitted once, by relative least squares, on
a handful of whole necks measured by `ProxyTask.cost`:
``latency_ms ~ a * sum(ms) + d * sum(activations) + e * sum(params) + b * steps + c``.

The table is one JSON file per settings under ``<cache root>/latency/table-<digest>.json`` (the
reference's calibration key plus this method's), grown lazily: a prediction measures only the
steps no process has measured yet, under a file lock, and merges them into the file atomically.
Other settings (threads, target, scope, input size, backbone, library versions, the processor)
are another file, so another table built afresh; a file holding another key is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from scipy.optimize import lsq_linear
from torch import nn

from nas_neck.data.cache import default_cache_root
from nas_neck.detect.head import DetectionHead
from nas_neck.dsl import Architecture, load_architecture
from nas_neck.errors import NasNeckError, WriteError, describe_os_error
from nas_neck.measure import (
    calibrate,
    calibrated_ms,
    measure_relative,
)
from nas_neck.ops import Resample, make_block, make_fusion
from nas_neck.proxy import ProxyTask

__all__ = ["DEFAULT_FIT", "LatencyTable", "Step"]

log = logging.getLogger(__name__)

_FORMAT = 7  # bump when step keys or the overhead model change
_FEATURES = ("steps_ms", "activations_M", "params_M", "steps", "constant")
_SMALL_FIT = (0, 4)  # the columns fitted on fewer than 2 necks per feature: scale and constant
DEFAULT_FIT = ("fpn", "pafpn", "bifpn", "nasfpn", "light")  # the whole necks the overhead fits on
_FIT_SAMPLES = tuple(
    (f, s) for s in (0, 1) for f in ("pafpn-family", "bifpn-family", "nasfpn-free")
)


@dataclass(frozen=True)
class Step:
    """One module of a neck as the table times it: its `key`, and how to build it and its input."""

    key: str
    kind: str  # extra, edge, fuse, block, head
    args: tuple[Any, ...]  # the builder's arguments
    shapes: tuple[tuple[int, int, int], ...]  # (channels, height, width) of each input tensor
    ref: tuple[int, int] | None = None  # an edge's reference size (upsampling to it)

    def build(self) -> tuple[nn.Module, Any]:
        """The module, and batch-1 random inputs in the form its forward takes."""
        xs = [torch.randn(1, c, h, w) for c, h, w in self.shapes]
        if self.kind in ("extra", "edge"):
            module = Resample(*self.args)
            if self.ref is not None:
                return module, (xs[0], torch.empty(1, 1, *self.ref))
            return module, xs[0]
        if self.kind == "fuse":
            return make_fusion(*self.args), xs
        if self.kind == "block":
            return make_block(*self.args), xs[0]
        out_channels, strides, classes, width, convs = self.args
        return DetectionHead(out_channels, strides, classes, width=width, num_convs=convs), xs


class LatencyTable:
    """Predicted batch-1 latency in ms of architectures on one proxy task's latency settings.

    Args:
        proxy: the proxy task whose ``cost`` the predictions stand in for (its latency target,
            threads, scope, input size, backbone and device).
        runs, rounds: timed runs (and fresh copies) of each step, shared by the steps timed
            together.
        fit: the whole necks the overhead is fitted on (architectures or shipped names; at least
            3); default the shipped classics and one sample of each searchable family.
    """

    def __init__(
        self,
        proxy: ProxyTask,
        *,
        runs: int = 40,
        rounds: int = 4,
        fit: Sequence[Architecture | str] | None = None,
    ) -> None:
        self.proxy = proxy
        self.runs = runs
        self.rounds = rounds
        fit = list(fit) if fit is not None else _default_fit()
        self._fit_archs = [a if isinstance(a, Architecture) else load_architecture(a) for a in fit]
        if len(self._fit_archs) < 3:
            raise NasNeckError(
                f"the latency overhead fits on at least 3 whole necks, got {len(fit)}"
            )
        reference, key = proxy.latency_reference()
        self._reference = reference
        self._reference_key = key
        self._fit_hashes = [a.hash for a in self._fit_archs]
        self.key: dict[str, Any] = json.loads(
            json.dumps(
                key | {"table": _FORMAT, "step_runs": runs, "step_rounds": rounds}, default=str
            )
        )
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        root = proxy.config.cache_root or default_cache_root()
        self.path = Path(root) / "latency" / f"table-{digest}.json"
        self._root = root
        self._steps: dict[str, list[float]] = {}  # key -> [ms, Melements written, Mparams]
        self._fit: dict[str, Any] | None = None
        self._channels: dict[tuple[int, ...], list[int]] = {}
        self._by_arch: dict[Architecture, list[Step]] = {}
        self.measured_steps = 0  # steps this instance timed (the rest came from the file)
        self.measured_necks = 0  # whole necks this instance timed for the overhead fit
        self._load()

    # ---- predicting ------------------------------------------------------------------------------
    def predict(self, arch: Architecture) -> float:
        """`arch`'s latency in ms, in the units of ``ProxyTask.cost(arch)["latency_ms"]``;
        measures (once for the machine) the steps and overhead fit the table still lacks."""
        steps = self.steps(arch)
        self._ensure(arch)
        if not self._fitted:
            self._fit_overhead()
        return self._predict(steps)

    def predict_many(self, archs: Sequence[Architecture]) -> list[float]:
        """`predict` of each."""
        for arch in archs:
            self._ensure(arch)
        lists = [self.steps(a) for a in archs]
        if not self._fitted:
            self._fit_overhead()
        return [self._predict(steps) for steps in lists]

    @property
    def _fitted(self) -> bool:
        """Whether the overhead is fitted, on this table's whole necks."""
        return self._fit is not None and self._fit["archs"] == self._fit_hashes

    def _predict(self, steps: list[Step]) -> float:
        return float(np.dot(self._fit["coef"], self._features(steps)))

    def _features(self, steps: list[Step]) -> list[float]:
        """What the overhead model weighs (`_FEATURES`): the steps' summed ms, activations
        written and parameters, their number, and 1."""
        rows = [self._steps[s.key] for s in steps]
        return [*(sum(r[i] for r in rows) for i in range(3)), float(len(rows)), 1.0]

    @property
    def overhead(self) -> dict[str, Any] | None:
        """The fitted overhead (``coef`` of `_FEATURES`, the necks it was fitted on), once fitted."""
        return self._fit

    # ---- steps -----------------------------------------------------------------------------------
    def steps(self, arch: Architecture) -> list[Step]:
        """`arch`'s steps in execution order, as `GraphNeck` (and in detector scope, the head)
        would build them on the proxy task's backbone maps at its input size."""
        if arch not in self._by_arch:  # by value (a frozen dataclass): no canonical hash
            self._by_arch[arch] = _steps(
                arch, self._in_channels(arch.inputs), self.proxy.config.input_size, self._head()
            )
        return self._by_arch[arch]

    def _in_channels(self, levels: tuple[int, ...]) -> list[int]:
        if levels not in self._channels:
            self._channels[levels] = self.proxy.channels(levels)
        return self._channels[levels]

    def _head(self) -> dict[str, Any] | None:
        c = self.proxy.config
        if c.latency_scope != "detector":
            return None
        t = c.train
        return {
            "classes": self.proxy.num_classes,
            "width": t.head_width,
            "convs": t.head_convs,
        }

    # ---- measuring -------------------------------------------------------------------------------
    def _timing(self) -> dict[str, Any]:
        c = self.proxy.config
        return {
            "threads": c.latency_threads,
            "warmup": c.latency_warmup,
            "device": self.proxy.device,
            "target": c.latency_target,
        }

    def _ensure(self, arch: Architecture) -> None:
        """Time the steps of `arch` no process has measured yet, and store them."""
        steps = self.steps(arch)
        if all(s.key in self._steps for s in steps):
            return
        with self._locked():
            self._load()
            todo = {s.key: s for s in steps if s.key not in self._steps}
            if not todo:
                return
            timing = self._timing()
            reference_ms = calibrated_ms(
                self._root, self._reference_key, lambda: calibrate(*self._reference, **timing)
            )
            with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
                times = self._apart(list(todo.values()), reference_ms, timing)
                for key, step in todo.items():
                    self._steps[key] = [times[key], *_footprint(*step.build())]
            self.measured_steps += len(todo)
            log.info("latency table: timed %d steps of %s (%s)", len(todo), arch.hash, self.path)
            self._save()

    def _apart(
        self, steps: list[Step], reference_ms: float, timing: dict[str, Any]
    ) -> dict[str, float]:
        """Each step timed on its own beside the reference, in the same rounds (onnxruntime: one
        session per step)."""
        modules = {s.key: s.build() for s in steps}
        latencies = measure_relative(
            modules, self._reference, reference_ms, runs=self.runs, rounds=self.rounds, **timing
        )
        return {key: lat.ms for key, lat in latencies.items()}

    def _fit_overhead(self) -> None:
        """Fit the overhead on the whole necks measured by `ProxyTask.cost`."""
        for arch in self._fit_archs:
            self._ensure(arch)
        with self._locked():
            self._load()
            if self._fitted:
                return
            x, y = [], []
            for arch in self._fit_archs:
                x.append(self._features(self.steps(arch)))
                y.append(self.proxy.cost(arch)["latency_ms"])
                self.measured_necks += 1
            self._fit = {
                "features": list(_FEATURES),
                "coef": _fit(np.array(x), np.array(y)),
                "archs": self._fit_hashes,
                "rows": [{"features": f, "measured_ms": m} for f, m in zip(x, y, strict=True)],
            }
            log.info("latency table: overhead fitted on %d necks: %s", len(y), self._fit["coef"])
            self._save()

    # ---- the file --------------------------------------------------------------------------------
    def _locked(self) -> FileLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(
                f"{self.path.parent}: cannot write the latency table: {describe_os_error(e)}"
            ) from None
        return FileLock(self.path.with_suffix(".lock"))

    def _load(self) -> None:
        """Merge what the file holds (other processes' steps, the fit) into this table."""
        try:
            stored = json.loads(self.path.read_text())
            steps = {str(k): [float(x) for x in v] for k, v in stored["steps"].items()}
            fit = stored.get("fit")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s: unreadable latency table (%s); building it again", self.path, e)
            return
        if stored.get("key") != self.key:
            log.warning("%s: holds another latency table; building it again", self.path)
            return
        self._steps.update(
            {k: v for k, v in steps.items() if len(v) == 3 and all(map(math.isfinite, v))}
        )
        if fit is not None:
            self._fit = fit

    def _save(self) -> None:
        record = {
            "key": self.key,
            "steps": dict(sorted(self._steps.items())),
            "fit": self._fit,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WriteError(
                f"{self.path}: cannot write the latency table: {describe_os_error(e)}"
            ) from None


def _default_fit() -> list[Architecture]:
    from nas_neck.dsl import load_space

    return [load_architecture(n) for n in DEFAULT_FIT] + [
        load_space(space).random(seed) for space, seed in _FIT_SAMPLES
    ]


def _fit(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Non-negative coefficients of `_FEATURES` minimising the relative error
    ``(x @ coef - y) / y``: every term only adds time (memory traffic, first touches of fresh
    pages, dispatch per step), so a prediction is never below the steps' own time. With fewer
    than two necks per feature only the scale and the constant are fitted (`_SMALL_FIT`)."""
    columns = list(range(len(_FEATURES))) if len(y) >= 2 * len(_FEATURES) else list(_SMALL_FIT)
    fit = lsq_linear(x[:, columns] / y[:, None], np.ones_like(y), bounds=(0.0, np.inf))
    coef = np.zeros(len(_FEATURES))
    coef[columns] = fit.x
    if not (np.all(np.isfinite(coef)) and coef[0] > 0):
        coef = np.zeros(len(_FEATURES))
        coef[0] = float(np.median(y / x[:, 0]))  # a plain scale
    return [float(v) for v in coef]


def _footprint(module: nn.Module, inputs: Any) -> tuple[float, float]:
    """(millions of activation elements its layers write in one forward, millions of params)."""
    written = [0]

    def count(_: nn.Module, __: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            written[0] += out.numel()

    module.eval()
    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            out = module(*inputs) if isinstance(inputs, tuple) else module(inputs)
    finally:
        for h in hooks:
            h.remove()
    if module not in leaves:  # the step's own output (a fusion's sum, an upsampled map)
        written[0] += sum(t.numel() for t in _tensors(out))
    return written[0] / 1e6, sum(p.numel() for p in module.parameters()) / 1e6


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)]


# ---- steps of an architecture, as GraphNeck builds it -----------------------------------------------
def _down(side: int, k: int) -> int:
    for _ in range(k):
        side = -(-side // 2)
    return side


def _resample_step(
    kind: str,
    in_ch: int,
    out_ch: int | None,
    in_level: int,
    out_level: int,
    up: str,
    down: str,
    hw: tuple[int, int],
    ref: tuple[int, int] | None,
) -> tuple[Step, int, tuple[int, int]]:
    """The step of ``Resample(in_ch, out_ch, in_level, out_level, up, down)`` on a map of size
    `hw` (upsampling to `ref` when given), its output channels and size."""
    k = out_level - in_level
    if k > 0:
        out_hw = (_down(hw[0], k), _down(hw[1], k))
    elif k < 0:
        out_hw = ref if ref is not None else (hw[0] * 2**-k, hw[1] * 2**-k)
    else:
        out_hw = hw
    target = in_ch if out_ch is None else out_ch
    modes = f"{up if k < 0 else '-'}/{down if k > 0 else '-'}"
    key = f"{kind}|{in_ch}>{target}|{k:+d}|{modes}|{hw[0]}x{hw[1]}>{out_hw[0]}x{out_hw[1]}"
    step = Step(
        key,
        kind,
        (in_ch, out_ch, in_level, out_level, up, down),
        ((in_ch, *hw),),
        ref if k < 0 and ref is not None else None,
    )
    return step, target, out_hw


def _steps(
    arch: Architecture, in_channels: list[int], size: int, head: dict[str, Any] | None
) -> list[Step]:
    """Mirror of `GraphNeck.__init__` and `_NodeModule.__init__`: the same modules with the same
    arguments, and the sizes their forward passes see (`feature_inputs`: ``ceil(S / stride)``)."""
    steps: list[Step] = []
    hws = [(-(-size // 2**lvl),) * 2 for lvl in arch.inputs]
    ch, hw, level = in_channels[-1], hws[-1], arch.inputs[-1]
    for lvl in arch.extra_levels:
        step, ch, hw = _resample_step(
            "extra", ch, arch.width, level, lvl, "nearest", arch.extra_downsample, hw, None
        )
        steps.append(step)
        hws.append(hw)
        level = lvl
    cell_ch = list(in_channels) + [arch.width] * len(arch.extra_levels)
    pruned = arch.pruned()
    for _ in range(arch.repeat):
        slots = list(zip(arch.cell_levels, cell_ch, hws, strict=True))  # (level, channels, size)
        index = {f"P{lvl}": i for i, lvl in enumerate(arch.cell_levels)}
        for node in pruned.nodes:
            same = [s for s in slots if s[0] == node.level]
            ref = same[0][2] if same else None
            concat = node.fuse == "concat"
            outs = []
            for name in node.inputs:
                lvl, c, in_hw = slots[index[name]]
                step, out_ch, out_hw = _resample_step(
                    "edge",
                    c,
                    None if concat else node.width,
                    lvl,
                    node.level,
                    node.upsample or "nearest",
                    node.downsample or "conv",
                    in_hw,
                    ref,
                )
                steps.append(step)
                outs.append((out_ch, *out_hw))
            chans = [o[0] for o in outs]
            node_hw = outs[0][1:]
            steps.append(
                Step(
                    f"fuse|{node.fuse}|{','.join(map(str, chans))}|{node.width}|"
                    f"{node_hw[0]}x{node_hw[1]}",
                    "fuse",
                    (node.fuse, len(outs), node.width),
                    tuple(outs),
                )
            )
            fused = sum(chans) if concat else node.width
            steps.append(
                Step(
                    f"block|{node.block}|{fused}>{node.width}|d{node.depth}|"
                    f"{node_hw[0]}x{node_hw[1]}",
                    "block",
                    (node.block, fused, node.width, node.depth),
                    ((fused, *node_hw),),
                )
            )
            index[node.name] = len(slots)
            slots.append((node.level, node.width, node_hw))
        outputs = [slots[index[n.name]] for n in pruned.outputs]
        by_level = {lvl: (c, s) for lvl, c, s in outputs}
        cell_ch = [by_level.get(lvl, (0, None))[0] for lvl in arch.cell_levels]
        hws = [by_level.get(lvl, (0, hw))[1] for lvl, hw in zip(arch.cell_levels, hws, strict=True)]
    if head is not None:
        args = (
            tuple(c for _, c, _ in outputs),
            tuple(2**lvl for lvl, _, _ in outputs),
            head["classes"],
            head["width"],
            head["convs"],
        )
        shapes = tuple((c, *s) for _, c, s in outputs)
        key = f"head|{args}|{','.join(f'{h}x{w}' for _, h, w in shapes)}"
        steps.append(Step(key.replace(" ", ""), "head", args, shapes))
    return steps
