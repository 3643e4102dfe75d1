"""Subnet evaluation with inherited weights: BatchNorm recalibration, then COCO mAP.

A path's BatchNorm statistics in the supernet are a running mix over every path that used
those channels (other widths, other ops upstream), not the statistics of the path's own
activations, so an extracted subnet is first recalibrated (as in SPOS, FairNAS and
Once-for-All): every BatchNorm's running statistics are reset and re-estimated as a
cumulative average (momentum None) over a few fixed training batches, forwarded in train
mode without gradients. Only the neck has BatchNorm (the head uses GroupNorm), so only
the neck is run for it.

Then the subnet (neck + the fixed head) predicts the validation cache with the project's
`predict` and decoder, and is scored with the COCO metrics of `nas_neck.detect.evaluate`
(the same area ranges, `max_dets` and summary of the precision array). `SubnetEvaluator`
loads the calibration and validation features into memory once, so each subnet costs its
extraction, a few forwards and the COCO evaluation. pycocotools' `COCOeval` is most of
that on dense plates; faster-coco-eval (a C++ reimplementation, checked equal within 1e-4
by the tests) is used when it is installed (`coco="auto"`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from nas_neck.config import TrainConfig
from nas_neck.detect.evaluate import coco_evaluate, count_mae, load_coco, to_coco_results
from nas_neck.detect.trainer import predict
from nas_neck.dsl import Architecture
from nas_neck.supernet.supernet import SupernetDetector

log = logging.getLogger(__name__)

__all__ = ["SubnetEvaluator", "fast_coco_evaluate", "recalibrate_bn"]

# name -> (IoU threshold or None for the .50:.95 mean, area range label); as detect.evaluate
_METRICS: dict[str, tuple[float | None, str]] = {
    "map": (None, "all"),
    "ap50": (0.5, "all"),
    "ap75": (0.75, "all"),
    "ap_small": (None, "small"),
    "ap_medium": (None, "medium"),
    "ap_large": (None, "large"),
}


@torch.no_grad()
def recalibrate_bn(module: nn.Module, batches: Iterable[Any]) -> int:
    """Re-estimate every BatchNorm's running statistics of `module` over `batches`.

    Each batch is passed as `module(batch)`. Statistics are reset and accumulated as a
    cumulative average (momentum None), in train mode without gradients; `module`'s mode and
    the layers' momenta are restored. Returns the number of batches forwarded.
    """
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [bn.momentum for bn in bns]
    was_training = module.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    n = 0
    try:
        for batch in batches:
            module(batch)
            n += 1
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        module.train(was_training)
    return n


class _Features:
    """In-memory features with the part of `FeatureCache`'s interface `predict` uses."""

    def __init__(self, levels: list[Tensor], image_size: tuple[int, int]) -> None:
        self.levels = levels
        self.image_size = image_size

    def __len__(self) -> int:
        return int(self.levels[0].shape[0])

    def features(self, indices: Sequence[int]) -> list[Tensor]:
        idx = list(indices)
        if idx == list(range(idx[0], idx[0] + len(idx))):  # predict's batches: views
            return [lv[idx[0] : idx[0] + len(idx)] for lv in self.levels]
        return [lv[torch.as_tensor(idx, dtype=torch.long)] for lv in self.levels]


def _load(
    cache: Any, indices: Sequence[int], device: torch.device, channels_last: bool, chunk: int = 64
) -> list[Tensor]:
    parts = [cache.features(indices[i : i + chunk]) for i in range(0, len(indices), chunk)]
    levels = [torch.cat([p[lv] for p in parts]).to(device) for lv in range(len(parts[0]))]
    if channels_last:
        levels = [lv.contiguous(memory_format=torch.channels_last) for lv in levels]
    return levels


class SubnetEvaluator:
    """Scores paths of a trained `SupernetDetector` on a validation cache, batched.

    Args:
        model: the supernet with its head.
        train_cache, val_cache: `FeatureCache` splits (calibration batches come from train).
        gt: the validation ground truth (a pycocotools COCO, as `CocoDetection.coco`).
        letterbox, image_sizes, category_ids: per validation image its `(scale, pad_x,
            pad_y)` and original (H, W), and the COCO id of each contiguous label (as
            `ProxyTask._results` maps them).
        config: score threshold, `max_det` and `count_thresh` of the decoder.
        calib_batches, calib_batch_size: training batches for BatchNorm recalibration, a fixed
            seeded draw shared by every subnet (2 x 16 images: at 256 px that is ~32k positions
            per channel at P3, ~500 at P5, plenty for a mean and a variance).
        batch_size: validation images per forward.
        channels_last: run the subnet and hold the features in channels-last memory format
            (about 1.3-1.6x faster CPU convolutions at these sizes; same results up to float
            rounding).
        coco: "auto" (faster-coco-eval when installed), "faster" or "pycocotools".
        count: also compute the colony-count MAE (`count_mae`, decoded detections scoring at
            least `count_thresh`; without the nested-duplicate removal of `ProxyTask.evaluate`).
    """

    def __init__(
        self,
        model: SupernetDetector,
        train_cache: Any,
        val_cache: Any,
        gt: Any,
        letterbox: Sequence[tuple[float, float, float]],
        image_sizes: Sequence[tuple[int, int]],
        category_ids: Sequence[int],
        config: TrainConfig | None = None,
        *,
        calib_batches: int = 2,
        calib_batch_size: int = 16,
        batch_size: int = 32,
        seed: int = 0,
        device: torch.device | None = None,
        coco: str = "auto",
        count: bool = False,
        channels_last: bool = True,
    ) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size
        self.count = count
        self.channels_last = channels_last
        n = len(train_cache)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        take = sorted(order[: min(n, calib_batches * calib_batch_size)])
        feats = _load(train_cache, take, self.device, channels_last)
        self.calibration = [
            [f[i : i + calib_batch_size] for f in feats]
            for i in range(0, len(take), calib_batch_size)
        ]
        size = tuple(val_cache.image_size)
        self.val = _Features(
            _load(val_cache, list(range(len(val_cache))), self.device, channels_last), size
        )
        self.image_ids = list(val_cache.image_ids)
        self.letterbox = list(letterbox)
        self.image_sizes = list(image_sizes)
        self.category_ids = list(category_ids)
        self.gt = load_coco(gt)
        self.coco = _coco_backend(coco)
        self._faster_gt = _faster_gt(self.gt) if self.coco == "faster" else None

    @classmethod
    def from_proxy(cls, model: SupernetDetector, proxy: Any, **kwargs: Any) -> SubnetEvaluator:
        """An evaluator on a `ProxyTask`'s caches, ground truth and decoder settings."""
        train_cache, val_cache, _ = proxy.caches(model.space.inputs)
        ds = proxy.val_set
        return cls(
            model,
            train_cache,
            val_cache,
            ds.coco,
            [ds.letterbox_params(i) for i in range(len(ds))],
            [(im["height"], im["width"]) for im in ds.coco.dataset["images"]],
            ds.category_ids,
            proxy.config.train,
            device=kwargs.pop("device", proxy.device),
            **kwargs,
        )

    def evaluate(self, arch: Architecture) -> dict[str, float]:
        """COCO metrics of path `arch` with inherited, recalibrated weights; and its timings
        (`extract_s`, `recalibrate_s`, `predict_s`, `coco_s`, `eval_s`)."""
        t0 = time.perf_counter()
        detector = self.model.extract(arch, self.config).to(self.device)
        if self.channels_last:
            detector = detector.to(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        recalibrate_bn(detector.neck, self.calibration)
        detector.eval()
        t2 = time.perf_counter()
        preds = predict(detector, self.val, self.config, self.device, self.batch_size)
        results = to_coco_results(
            preds, self.image_ids, self.letterbox, self.category_ids, self.image_sizes
        )
        t3 = time.perf_counter()
        metrics = self.coco_metrics(results)
        if self.count:
            metrics["count_mae"] = count_mae(self.gt, results, self.config.count_thresh)
        t4 = time.perf_counter()
        metrics |= {
            "extract_s": t1 - t0,
            "recalibrate_s": t2 - t1,
            "predict_s": t3 - t2,
            "coco_s": t4 - t3,
            "eval_s": t4 - t0,
            "detections": float(len(results)),
        }
        return metrics

    def coco_metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        if self.coco == "faster" and results:
            return fast_coco_evaluate(self._faster_gt, results, self.config.max_det)
        return coco_evaluate(self.gt, results, max_dets=self.config.max_det)


def _coco_backend(coco: str) -> str:
    if coco not in ("auto", "faster", "pycocotools"):
        raise ValueError(f"coco: expected auto, faster or pycocotools, got {coco!r}")
    if coco == "pycocotools":
        return coco
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        if coco == "faster":
            raise
        return "pycocotools"
    return "faster"


def _faster_gt(gt: Any) -> Any:
    """The (completed) ground truth as a faster-coco-eval COCO object."""
    from faster_coco_eval import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(copy.deepcopy(gt.dataset))


def fast_coco_evaluate(
    gt: Any, detections: Sequence[Mapping[str, Any]], max_dets: int = 100
) -> dict[str, float]:
    """`coco_evaluate`'s metrics with faster-coco-eval: `gt` a faster-coco-eval COCO (see
    `_faster_gt`), every image evaluated, `detections` non-empty."""
    from faster_coco_eval import COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        results = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval_faster(gt, results, iouType="bbox", print_function=log.debug)
        evaluator.params.imgIds = sorted(gt.getImgIds())
        evaluator.params.maxDets = sorted({1, 10, max_dets})
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])[..., params.maxDets.index(max_dets)]
    metrics = {}
    for name, (iou, area) in _METRICS.items():
        p = precision[..., list(params.areaRngLbl).index(area)]
        if iou is not None:
            p = p[np.isclose(params.iouThrs, iou)]
        valid = p[p > -1]
        metrics[name] = float(valid.mean()) if valid.size else math.nan
    return metrics
