"""The proxy task every candidate is scored on: brief training on cached frozen-backbone features,
COCO evaluation on the validation split, and cost (latency, FLOPs, params) measured first.

Build one `ProxyTask` per process; it loads the data and backbone once and builds (or reuses) the
feature caches, so each trial pays only for its own neck and head.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from nas_neck.backbone import FrozenBackbone
from nas_neck.config import NESTED_OVERLAP, ProxyConfig
from nas_neck.data.cache import FeatureCache, default_cache_root
from nas_neck.data.coco import CocoDetection
from nas_neck.data.synth import ensure_default_dataset
from nas_neck.detect.evaluate import coco_evaluate, count_mae, to_coco_results
from nas_neck.detect.nested import nested_keep
from nas_neck.detect.trainer import Detector, load_checkpoint, predict, save_checkpoint, train
from nas_neck.device import default_device
from nas_neck.dsl import Architecture, load_architecture
from nas_neck.errors import CheckpointError, DataError
from nas_neck.measure import (
    NeckWithHead,
    calibrate,
    calibrated_ms,
    count_flops,
    count_params,
    feature_inputs,
    machine_key,
    measure_relative,
)

log = logging.getLogger(__name__)

REFERENCE_ARCH = "fpn"  # the shipped neck every latency is relative to (timed beside each one)
_LATENCY_ROUNDS = 5  # fresh copies per measurement: enough to sample a copy's layout modes, and
# each costs a deep copy of every module timed (~40 ms a neck, ~70 ms neck + head)


@dataclass
class Outcome:
    """A trained candidate: its model, metrics, losses, where the time went and the arithmetic
    it was trained in (`nas_neck.device.resolve_precision`; None where the producer does not say).
    """

    model: Detector
    arch: Architecture
    metrics: dict[str, float]
    losses: list[float]
    timings: dict[str, float]
    precision: str | None = None
    epochs: int | None = None  # trained in all (a resumed model counts its earlier epochs)
    seed: int | None = None


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
        """The backbone's channels at `levels`, from timm's feature info: what `cost` and the
        latency table need, without the weights or a feature cache."""
        return list(_backbone_channels(self.config.backbone, levels))

    # ---- cost --------------------------------------------------------------------------------
    def cost(self, arch: Architecture) -> dict[str, Any]:
        """Latency at batch 1 and the input size, FLOPs and params of `arch`'s neck.

        Latency is timed in ``latency_target`` over ``latency_scope`` (the neck, or the detector:
        neck + the fixed head) beside the reference (`REFERENCE_ARCH`, same target and scope) in
        the same rounds, and reported as the ratio of their p10s times the reference's calibrated
        time (`nas_neck.measure.measure_relative`), so that workers and Ray trials, each timing in
        its own process, agree. The ``latency_runs`` timed runs are shared by the modules timed
        together, over `_LATENCY_ROUNDS` rounds; neck + head is always one of them
        (``latency_head_ms``).
        """
        start = time.perf_counter()
        c = self.config
        channels = self.channels(arch.inputs)
        neck, detector = self._detector(arch, channels)
        inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], c.input_size)
        flops, params = count_flops(neck, (inputs,)), count_params(neck)  # on the CPU, untimed
        timed = {"neck": (neck, inputs)} if c.latency_scope == "neck" else {}
        timed["neck+head"] = (detector, inputs)
        reference, key = self.latency_reference()
        timing = {
            "threads": c.latency_threads,
            "warmup": c.latency_warmup,
            "device": self.device,
            "target": c.latency_target,
        }
        root = c.cache_root or default_cache_root()
        reference_ms = calibrated_ms(root, key, lambda: calibrate(*reference, **timing))
        runs = max(1, c.latency_runs // (len(timed) + 1))
        lat = measure_relative(
            timed, reference, reference_ms, runs=runs, rounds=_LATENCY_ROUNDS, **timing
        )
        main = lat["neck" if c.latency_scope == "neck" else "neck+head"]
        return {
            "latency_ms": main.ms,
            "latency_ratio": main.ratio,
            "latency_reference_ms": reference_ms,
            "latency_p10_ms": main.latency.p10_ms,
            "latency_p90_ms": main.latency.p90_ms,
            "latency_head_ms": lat["neck+head"].ms,
            "latency_threads": main.latency.threads,
            "latency_load_avg": main.latency.load_avg,  # the 1-minute load average
            "latency_busy": main.latency.busy,  # other work over the threads timed: suspect
            "latency_target": c.latency_target,
            "latency_scope": c.latency_scope,
            "gflops": flops / 1e9,
            "mparams": params / 1e6,
            "measure_s": time.perf_counter() - start,
        }

    def _detector(self, arch: Architecture, channels: list[int]) -> tuple[nn.Module, NeckWithHead]:
        """`arch`'s neck, and neck + the fixed head as training builds them."""
        model = Detector(arch, channels, self.num_classes, self.config.train)
        return model.neck, NeckWithHead(model.neck, model.head)

    def latency_reference(self) -> tuple[tuple[nn.Module, list[Tensor]], dict[str, Any]]:
        """The reference latencies are relative to (`REFERENCE_ARCH` on this backbone's maps, with
        the head in detector scope) and its inputs; and the key of its calibration."""
        c = self.config
        arch = load_architecture(REFERENCE_ARCH)
        channels = self.channels(arch.inputs)
        neck, detector = self._detector(arch, channels)
        inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], c.input_size)
        key = machine_key(c.latency_threads, c.latency_target, self.device) | {
            "reference": REFERENCE_ARCH,
            "reference_hash": arch.hash,
            "backbone": c.backbone,
            "channels": channels,
            "input_size": c.input_size,
            "scope": c.latency_scope,
        }
        if c.latency_scope == "neck":
            return (neck, inputs), key
        t = c.train
        key["head"] = {"classes": self.num_classes, "width": t.head_width, "convs": t.head_convs}
        return (detector, inputs), key

    # ---- train + evaluate --------------------------------------------------------------------
    def run(
        self,
        arch: Architecture,
        on_epoch: Any = None,
        *,
        epochs: int | None = None,
        seed: int | None = None,
        resume: Path | None = None,
        start_epoch: int = 0,
    ) -> Outcome:
        """Train `arch` with the shared recipe and evaluate it on the validation split; the
        outcome names the precision it was trained in, so a study that mixes them shows it.

        `epochs` and `seed` override the recipe's (a rung of a multi-fidelity search, a
        confirmation run); `resume` continues the checkpoint of a model already trained
        `start_epoch` epochs for `epochs` more (see `nas_neck.detect.trainer.train`).
        """
        train_cache, val_cache, backbone = self.caches(arch.inputs)
        update = {"epochs": epochs, "seed": seed}
        cfg = self.config.train.model_copy(
            update={k: v for k, v in update.items() if v is not None}
        )
        torch.manual_seed(cfg.seed)
        model = Detector(arch, backbone.channels, self.num_classes, cfg)
        if resume is not None:
            previous, previous_arch, _ = load_checkpoint(resume)
            if previous_arch.hash != arch.hash:
                raise CheckpointError(
                    f"{resume}: holds architecture {previous_arch.hash}, not {arch.hash}"
                )
            model.load_state_dict(previous.state_dict())
        result = train(
            model,
            train_cache,
            cfg,
            self.device,
            on_epoch=(lambda e, loss: on_epoch(e, cfg.epochs, loss)) if on_epoch else None,
            start_epoch=start_epoch,
        )
        start = time.perf_counter()
        metrics = self.evaluate(model, val_cache)
        timings = {"train_s": result.seconds, "eval_s": time.perf_counter() - start}
        return Outcome(
            model,
            arch,
            metrics,
            result.losses,
            timings,
            result.precision,
            epochs=start_epoch + cfg.epochs,
            seed=cfg.seed,
        )

    def evaluate(self, model: Detector, val_cache: Any) -> dict[str, float]:
        """COCO metrics and colony-count MAE on the validation split, in original coordinates.

        The count is `nas-neck predict`'s: detections scoring at least `count_thresh`, without
        nested duplicates (`nas_neck.detect.nested`, per class); mAP is on the decoder's output.
        """
        cfg = self.config.train
        preds = predict(model, val_cache, cfg, self.device)
        metrics = coco_evaluate(self.val_set.coco, self._results(preds), max_dets=cfg.max_det)
        counted = [_counted(p, cfg.count_thresh) for p in preds]
        metrics["count_mae"] = count_mae(
            self.val_set.coco, self._results(counted), cfg.count_thresh
        )
        return metrics

    def _results(self, preds: list[dict[str, Tensor]]) -> list[dict[str, Any]]:
        """Decoded validation predictions as COCO results in original pixels."""
        ds = self.val_set
        return to_coco_results(
            preds,
            ds.image_ids,
            [ds.letterbox_params(i) for i in range(len(ds))],
            ds.category_ids,
            image_sizes=[(im["height"], im["width"]) for im in ds.coco.dataset["images"]],
        )

    def save(self, outcome: Outcome, path: Path) -> Path:
        """Write `outcome` as a checkpoint at `path`, atomically (`save_checkpoint`): a full disk
        is a `WriteError` naming the file, which a search records as the trial's fail_reason."""
        return save_checkpoint(
            path,
            outcome.model,
            outcome.arch,
            {
                "metrics": outcome.metrics,
                "precision": outcome.precision,
                "epochs": outcome.epochs,
                "seed": outcome.seed,
                "config": self.config.train.model_dump(),
                "input_size": self.config.input_size,
                "backbone": self.config.backbone,
                "category_ids": self.train_set.category_ids,
                "category_names": self.train_set.category_names,
            },
        )

    def checkpoint_bytes(self, arch: Architecture) -> int:
        """About the size of the checkpoint `save` writes for `arch` (what a search checks there
        is room for before it trains, `nas_neck.errors.check_room`): its weights and buffers, and
        room for the pickle's framing and the metadata. No weights are allocated."""
        with torch.device("meta"):
            model = Detector(arch, self.channels(arch.inputs), self.num_classes, self.config.train)
        tensors = list(model.state_dict().values())
        weights = sum(t.numel() * t.element_size() for t in tensors)
        return weights + 1024 * len(tensors) + 256 * 1024


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


@functools.cache
def _backbone_channels(name: str, levels: tuple[int, ...]) -> tuple[int, ...]:
    """Channels of backbone `name` at `levels`, from timm's feature info (no weights, no cache):
    the reference's inputs need no feature cache of their own."""
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    by_stride = dict(zip(info.reduction(), info.channels(), strict=True))
    return tuple(by_stride[2**lvl] for lvl in levels)


def _counted(pred: dict[str, Tensor], thresh: float) -> dict[str, Tensor]:
    """The detections of one image that `predict` counts: scoring at least `thresh`, without
    nested duplicates (a higher-scoring box decides alone, so dropping the rest first is the
    same)."""
    pred = {k: v[pred["scores"] >= thresh] for k, v in pred.items()}
    keep = nested_keep(pred["boxes"], pred["scores"], pred["labels"], NESTED_OVERLAP, False)
    return {k: v[keep] for k, v in pred.items()}
