"""Zero-cost accuracy proxies: score an untrained neck (with the fixed head) from a few passes.

Every proxy scores the candidate as training would build it (`Detector`: the neck plus the fixed
head, initialised from ``seed``) on fixed batches of cached backbone features of the proxy task's
training split (drawn once from ``seed``), so two calls with one seed give the same number. Higher
is meant to be better for each one. Each proxy starts from a fresh copy of the initial model, so
none depends on which ran before (BatchNorm running statistics, synflow's sign flip).

* ``params``: the neck's parameters (the baseline to beat; as `ProxyTask.cost` counts them).
* ``flops``: the neck's FLOPs at batch 1 on the cached feature shapes (`count_flops`); this and
  ``params`` need shapes only, so scoring by them builds no feature cache.
* ``grad_norm``: sum over conv / linear layers of the L2 norm of the loss gradient of their
  weights, one batch (Abdelfattah et al. 2021).
* ``snip``: ``sum |w * dL/dw|`` over conv / linear weights, one batch (Lee et al. 2019).
* ``synflow``: ``log sum(|w| * dR/d|w|)`` over the neck's conv / linear weights, with every
  parameter replaced by its absolute value, BatchNorm in eval mode (identity at initialisation),
  float64, an all-ones input and ``R`` the sum of the neck's outputs (Tanaka et al. 2020;
  data-free). The neck alone: the head's GroupNorm centres maps, which synflow's positivity
  assumption does not allow.
* ``naswot``: ``log det K`` of the batch's activation-pattern kernel, ``K_ij`` the number of
  SiLU / ReLU units (neck and head) whose input has the same sign for samples i and j (Mellor et
  al. 2021); the identity is added to K, so two identical patterns stay finite.
* ``zico``: ``sum over layers of log(sum_w mean|g_w| / std(g_w))``, mean and standard deviation of
  each weight's gradient over ``batches`` batches, weights with a zero deviation skipped (Li et
  al. 2023).

A value that still comes out non-finite (a diverging loss) is replaced by the most negative float,
with a warning: a proxy always returns a finite number a ranking can use.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nas_neck.detect.loss import DetectionLoss
from nas_neck.detect.trainer import Detector
from nas_neck.dsl import Architecture
from nas_neck.errors import NasNeckError
from nas_neck.measure import count_flops, count_params, feature_inputs
from nas_neck.proxy import ProxyTask

__all__ = ["PROXIES", "ZeroCost"]

log = logging.getLogger(__name__)

PROXIES: tuple[str, ...] = ("params", "flops", "grad_norm", "snip", "synflow", "naswot", "zico")

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]  # features per level, targets per image


class ZeroCost:
    """The zero-cost proxies of architectures on one proxy task's cached features.

    Args:
        proxy: the proxy task (its training cache, classes and head settings).
        seed: seeds the candidate's initial weights and the batches drawn from the cache.
        batch_size: images per batch (NASWOT's kernel is ``batch_size`` square).
        batches: batches ZiCo takes the gradient statistics over (at least 2); the other
            gradient proxies use the first.
    """

    def __init__(
        self, proxy: ProxyTask, *, seed: int = 0, batch_size: int = 8, batches: int = 3
    ) -> None:
        if batch_size < 2 or batches < 2:
            raise NasNeckError(
                f"zero-cost proxies need batch_size >= 2 and batches >= 2, got {batch_size}, "
                f"{batches}"
            )
        self.proxy = proxy
        self.seed = seed
        self.batch_size = batch_size
        self.batches = batches
        self._batches: dict[tuple[int, ...], list[Batch]] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """What the scores depend on besides the architecture (a key for caching them)."""
        c = self.proxy.config
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "input_size": c.input_size,
            "backbone": c.backbone,
            "head": {"width": c.train.head_width, "convs": c.train.head_convs},
            "proxies": list(PROXIES),
        }

    def score(self, arch: Architecture, proxies: Sequence[str] = PROXIES) -> dict[str, float]:
        """``{proxy: value}`` for `arch`, each finite."""
        return {name: value for name, (value, _) in self.timed(arch, proxies).items()}

    def timed(
        self, arch: Architecture, proxies: Sequence[str] = PROXIES
    ) -> dict[str, tuple[float, float]]:
        """``{proxy: (value, seconds it took)}`` for `arch`."""
        unknown = [p for p in proxies if p not in _PROXIES and p not in _SHAPES_ONLY]
        if unknown:
            raise NasNeckError(
                f"unknown zero-cost proxy {unknown[0]!r}; expected one of {', '.join(PROXIES)}"
            )
        channels = self.proxy.channels(arch.inputs)
        # params and flops need shapes only: no feature cache is built for them
        needs_data = any(name not in _SHAPES_ONLY for name in proxies)
        batches = self._batches_for(arch.inputs) if needs_data else []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = Detector(arch, channels, self.proxy.num_classes, self.proxy.config.train)
            shapes = []
            if any(name in _SHAPES_ONLY for name in proxies):
                strides = [2**lvl for lvl in arch.inputs]
                shapes = feature_inputs(channels, strides, self.proxy.config.input_size)
        results = {}
        for name in proxies:
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if name in _SHAPES_ONLY:
                    value = _SHAPES_ONLY[name](model, shapes)
                else:
                    value = _PROXIES[name](copy.deepcopy(model), batches)
            results[name] = (_finite(name, value, arch), time.perf_counter() - start)
        return results

    def _batches_for(self, levels: tuple[int, ...]) -> list[Batch]:
        """``batches`` fixed batches of the training cache at `levels`, drawn from the seed."""
        if levels not in self._batches:
            cache = self.proxy.caches(levels)[0]
            n = self.batch_size * self.batches
            if len(cache) < n:
                raise NasNeckError(
                    f"zero-cost proxies need {n} cached training images, the cache has "
                    f"{len(cache)} (lower batch_size or batches)"
                )
            order = np.random.default_rng(self.seed).permutation(len(cache))[:n].tolist()
            chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            self._batches[levels] = [(cache.features(c), cache.targets(c)) for c in chunks]
        return self._batches[levels]


def _finite(name: str, value: float, arch: Architecture) -> float:
    if math.isfinite(value):
        return float(value)
    log.warning(
        "zero-cost proxy %s of %s is %s; scored as the lowest value", name, arch.hash, value
    )
    return sys.float_info.max if value == math.inf else -sys.float_info.max


# ---- the proxies ---------------------------------------------------------------------------------
def _weights(module: nn.Module) -> list[Tensor]:
    """The weights of every conv and linear layer: what the gradient proxies sum over."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _backward(model: Detector, batch: Batch) -> None:
    """One training-mode forward and backward of the detection loss on `batch`."""
    model.train()
    model.zero_grad(set_to_none=True)
    features, targets = batch
    DetectionLoss()(model(features), targets)["loss"].backward()


def _params(model: Detector, inputs: list[Tensor]) -> float:
    return float(count_params(model.neck))


def _flops(model: Detector, inputs: list[Tensor]) -> float:
    """The neck's FLOPs on batch-1 maps of the cached features' shapes (`feature_inputs`)."""
    return float(count_flops(model.neck, (inputs,)))


def _grad_norm(model: Detector, batches: list[Batch]) -> float:
    _backward(model, batches[0])
    return sum(float(w.grad.norm()) for w in _weights(model) if w.grad is not None)


def _snip(model: Detector, batches: list[Batch]) -> float:
    _backward(model, batches[0])
    return sum(
        float((w.detach() * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None
    )


def _synflow(model: Detector, batches: list[Batch]) -> float:
    neck = model.neck.double().eval()
    with torch.no_grad():
        for p in neck.parameters():
            p.abs_()
    ones = [torch.ones_like(f[:1], dtype=torch.float64) for f in batches[0][0]]
    total = sum(out.sum() for out in neck(ones))
    total.backward()
    flow = sum(float((w.detach() * w.grad).sum()) for w in _weights(neck) if w.grad is not None)
    return math.log(flow) if flow > 0 else -sys.float_info.max


def _naswot(model: Detector, batches: list[Batch]) -> float:
    features, _ = batches[0]
    n = features[0].shape[0]
    kernel = torch.eye(n, dtype=torch.float64)

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        code = (inputs[0] > 0).flatten(1).double()
        kernel.add_(code @ code.T + (1 - code) @ (1 - code).T)

    hooks = [
        m.register_forward_pre_hook(record)
        for m in model.modules()
        if isinstance(m, nn.SiLU | nn.ReLU)
    ]
    try:
        model.train()
        with torch.no_grad():
            model(features)
    finally:
        for h in hooks:
            h.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


def _zico(model: Detector, batches: list[Batch]) -> float:
    grads: list[list[Tensor]] = []
    for batch in batches:
        _backward(model, batch)
        weights = _weights(model)
        grads.append([w.grad.flatten().clone() if w.grad is not None else None for w in weights])
    score = 0.0
    for layer in zip(*grads, strict=True):
        if any(g is None for g in layer):
            continue
        g = torch.stack(layer)
        std = g.std(dim=0, unbiased=False)
        nonzero = std > 0
        ratio = float((g.abs().mean(dim=0)[nonzero] / std[nonzero]).sum())
        if ratio > 0:
            score += math.log(ratio)
    return score


_SHAPES_ONLY: dict[str, Callable[[Detector, list[Tensor]], float]] = {
    "params": _params,
    "flops": _flops,
}
_PROXIES: dict[str, Callable[[Detector, list[Batch]], float]] = {
    "grad_norm": _grad_norm,
    "snip": _snip,
    "synflow": _synflow,
    "naswot": _naswot,
    "zico": _zico,
}
