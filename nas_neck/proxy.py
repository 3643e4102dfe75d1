"""The proxy task every candidate is scored on: brief training on cached frozen-backbone features,
COCO evaluation on the validation split, and cost (latency, FLOPs, params) measured first.

Build one `ProxyTask` per process; it loads the data and backbone once and builds (or reuses) the
feature caches, so each trial pays only for its own neck and head.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas_neck.backbone import FrozenBackbone
from nas_neck.config import ProxyConfig
from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.data.synth import ensure_default_dataset
from nas_neck.detect.evaluate import coco_evaluate, count_mae, to_coco_results
from nas_neck.detect.head import DetectionHead
from nas_neck.detect.trainer import Detector, predict, save_checkpoint, train
from nas_neck.device import default_device
from nas_neck.dsl import Architecture
from nas_neck.errors import DataError
from nas_neck.measure import count_flops, count_params, feature_inputs, measure_neck
from nas_neck.neck import GraphNeck

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """A trained candidate: its model, metrics, losses and where the time went."""

    model: Detector
    arch: Architecture
    metrics: dict[str, float]
    losses: list[float]
    timings: dict[str, float]


class ProxyTask:
    """Scores architectures on one dataset with one frozen backbone."""

    def __init__(
        self, config: ProxyConfig | None = None, device: torch.device | None = None
    ) -> None:
        self.config = config or ProxyConfig()
        self.device = device or default_device()
        self.train_ann, self.val_ann, self.image_dir = resolve_data(self.config)
        size = self.config.input_size
        self.train_set = CocoDetection(self.train_ann, self.image_dir, size)
        self.val_set = CocoDetection(self.val_ann, self.image_dir, size)
        if self.val_set.category_ids != self.train_set.category_ids:
            raise DataError(f"{self.val_ann}: categories differ from {self.train_ann}")
        self._caches: dict[tuple[int, ...], tuple[Any, Any, FrozenBackbone]] = {}

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    def caches(self, levels: tuple[int, ...]) -> tuple[Any, Any, FrozenBackbone]:
        """(train cache, val cache, backbone) for these backbone levels, built once."""
        if levels not in self._caches:
            c = self.config
            backbone = FrozenBackbone(c.backbone, levels, c.backbone_weights)
            train_cache = FeatureCache.build(
                self.train_set, backbone, root=c.cache_root, views=c.views
            )
            val_cache = FeatureCache.build(self.val_set, backbone, root=c.cache_root, views=(0,))
            self._caches[levels] = (train_cache, val_cache, backbone)
        return self._caches[levels]

    def channels(self, levels: tuple[int, ...]) -> list[int]:
        return self.caches(levels)[2].channels

    # ---- cost --------------------------------------------------------------------------------
    def cost(self, arch: Architecture) -> dict[str, float]:
        """Latency (neck, and neck + head) at batch 1 and the input size, FLOPs and params."""
        start = time.perf_counter()
        channels = self.channels(arch.inputs)
        strides = [2**lvl for lvl in arch.inputs]
        neck = GraphNeck(arch, channels)
        head = DetectionHead(
            neck.out_channels,
            neck.out_strides,
            self.num_classes,
            width=self.config.train.head_width,
            num_convs=self.config.train.head_convs,
        )
        size = self.config.input_size
        lat = measure_neck(
            neck,
            channels,
            strides,
            size,
            head=head,
            threads=self.config.latency_threads,
            warmup=self.config.latency_warmup,
            runs=self.config.latency_runs,
            device=self.device,
        )
        flops = count_flops(neck, (feature_inputs(channels, strides, size),))
        return {
            "latency_ms": lat["neck"].median_ms,
            "latency_p90_ms": lat["neck"].p90_ms,
            "latency_head_ms": lat["neck+head"].median_ms,
            "latency_threads": lat["neck"].threads,
            "gflops": flops / 1e9,
            "mparams": count_params(neck) / 1e6,
            "measure_s": time.perf_counter() - start,
        }

    # ---- train + evaluate --------------------------------------------------------------------
    def run(self, arch: Architecture, on_epoch: Any = None) -> Outcome:
        """Train `arch` with the shared recipe and evaluate it on the validation split."""
        train_cache, val_cache, backbone = self.caches(arch.inputs)
        cfg = self.config.train
        torch.manual_seed(cfg.seed)
        model = Detector(arch, backbone.channels, self.num_classes, cfg)
        epochs = cfg.epochs
        result = train(
            model,
            train_cache,
            cfg,
            self.device,
            on_epoch=(lambda e, loss: on_epoch(e, epochs, loss)) if on_epoch else None,
        )
        start = time.perf_counter()
        metrics = self.evaluate(model, val_cache)
        timings = {"train_s": result.seconds, "eval_s": time.perf_counter() - start}
        return Outcome(model, arch, metrics, result.losses, timings)

    def evaluate(self, model: Detector, val_cache: Any) -> dict[str, float]:
        """COCO metrics and colony-count MAE on the validation split, in original coordinates."""
        cfg = self.config.train
        preds = predict(model, val_cache, cfg, self.device)
        ds = self.val_set
        results = to_coco_results(
            preds,
            ds.image_ids,
            [ds.letterbox_params(i) for i in range(len(ds))],
            ds.category_ids,
            image_sizes=[(im["height"], im["width"]) for im in ds.coco.dataset["images"]],
        )
        metrics = coco_evaluate(ds.coco, results, max_dets=cfg.max_det)
        metrics["count_mae"] = count_mae(ds.coco, results, cfg.count_thresh)
        return metrics

    def save(self, outcome: Outcome, path: Path) -> Path:
        """Write `outcome` as a checkpoint at `path`, atomically (`save_checkpoint`): a full disk
        is a `WriteError` naming the file, which a search records as the trial's fail_reason."""
        return save_checkpoint(
            path,
            outcome.model,
            outcome.arch,
            {
                "metrics": outcome.metrics,
                "config": self.config.train.model_dump(),
                "input_size": self.config.input_size,
                "backbone": self.config.backbone,
                "category_ids": self.train_set.category_ids,
                "category_names": self.train_set.category_names,
            },
        )


def resolve_data(config: ProxyConfig) -> tuple[Path, Path, Path | None]:
    """(train annotations, val annotations, image folder); the synthetic default when no data."""
    if config.data is None:
        synth = ensure_default_dataset()
        return synth.train_ann, synth.val_ann, synth.image_dir
    data = Path(config.data)
    if data.is_dir():
        train_ann, val_ann = data / "train.json", data / "val.json"
        for p in (train_ann, val_ann):
            if not p.exists() and not (config.val_data and p == val_ann):
                raise DataError(
                    f"{data}: expected train.json and val.json in the folder ({p.name} is missing)"
                )
        return train_ann, Path(config.val_data or val_ann), config.images
    if not data.exists():
        raise DataError(f"--data {data}: no such file or folder")
    if config.val_data is None:
        raise DataError(
            f"--data {data} is one annotation file: give the validation split with --val-data"
        )
    return data, Path(config.val_data), config.images
