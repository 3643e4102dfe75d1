"""Brief training of neck + head on cached backbone features (the search's proxy task).

Every candidate gets the same recipe: AdamW, linear warm-up then cosine decay, gradient clipping,
a fixed seed and a fixed data order, so differences in the result come from the neck. A
non-finite loss stops the run at once with a clear reason instead of wasting the budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nas_neck.config import TrainConfig
from nas_neck.detect.decode import decode
from nas_neck.detect.head import DetectionHead, HeadOutput
from nas_neck.detect.loss import DetectionLoss
from nas_neck.device import autocast_context
from nas_neck.dsl import Architecture, SearchSpace
from nas_neck.errors import NasNeckError
from nas_neck.neck import GraphNeck

log = logging.getLogger(__name__)


class TrainingDiverged(NasNeckError):
    """The loss became NaN or infinite."""


class Detector(nn.Module):
    """Neck + the fixed head; takes backbone feature maps (the backbone itself is frozen apart)."""

    def __init__(
        self, arch: Architecture, in_channels: list[int], num_classes: int, config: TrainConfig
    ) -> None:
        super().__init__()
        self.neck = GraphNeck(arch, in_channels)
        self.head = DetectionHead(
            self.neck.out_channels,
            self.neck.out_strides,
            num_classes,
            width=config.head_width,
            num_convs=config.head_convs,
        )

    def forward(
        self, features: list[Tensor], image_size: tuple[int, int] | None = None
    ) -> HeadOutput:
        return self.head.predict(self.neck(features), image_size)


@dataclass
class TrainResult:
    """What a brief training produced."""

    losses: list[float]
    seconds: float
    steps: int
    parts: dict[str, list[float]] = field(default_factory=dict)


def train(
    model: Detector,
    cache: Any,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` on `cache` (a `FeatureCache` split) for `config.epochs`; per-epoch mean losses."""
    torch.manual_seed(config.seed)
    model.to(device).train()
    criterion = DetectionLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    n = len(cache)
    per_epoch = max(1, n // config.batch_size)  # drop the ragged last batch: fixed step count
    total = per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.warmup_steps, total)
    )
    order = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    parts: dict[str, list[float]] = {"loss_cls": [], "loss_box": []}
    start, step = time.perf_counter(), 0
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=order).tolist()
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_box": 0.0}
        for b in range(per_epoch):
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
            feats = [f.to(device, non_blocking=True) for f in cache.features(idx)]
            targets = [{k: v.to(device) for k, v in t.items()} for t in cache.targets(idx)]
            with autocast_context(device):
                out = model(feats)
            loss = criterion(out, targets)
            value = loss["loss"]
            if not torch.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(cls {loss['loss_cls'].item():.4g}, box {loss['loss_box'].item():.4g})"
                )
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            for k in sums:
                sums[k] += float(loss[k].detach())
        losses.append(sums["loss"] / per_epoch)
        for k in parts:
            parts[k].append(sums[k] / per_epoch)
        log.debug("epoch %d/%d loss %.4f", epoch + 1, config.epochs, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    return TrainResult(losses=losses, seconds=time.perf_counter() - start, steps=step, parts=parts)


@torch.no_grad()
def predict(
    model: Detector, cache: Any, config: TrainConfig, device: torch.device, batch_size: int = 16
) -> list[dict[str, Tensor]]:
    """Decoded detections (letterboxed input pixels, contiguous labels) for every cached image."""
    model.to(device).eval()
    size = tuple(cache.image_size) if hasattr(cache, "image_size") else None
    preds: list[dict[str, Tensor]] = []
    for i in range(0, len(cache), batch_size):
        idx = list(range(i, min(i + batch_size, len(cache))))
        feats = [f.to(device) for f in cache.features(idx)]
        with autocast_context(device):
            out = model(feats, size)
        preds += [
            {k: v.cpu() for k, v in p.items()}
            for p in decode(out, score_thresh=config.score_thresh, max_det=config.max_det)
        ]
    return preds


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def save_checkpoint(
    path: str | Path, model: Detector, arch: Architecture, meta: dict[str, Any]
) -> Path:
    """Neck + head weights with everything needed to rebuild them (`load_checkpoint`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "arch": arch.to_dict(),
            "in_channels": model.neck.in_channels,
            "num_classes": model.head.num_classes,
            "config": meta.get("config", {}),
            "state_dict": model.state_dict(),
            "meta": meta,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path) -> tuple[Detector, Architecture, dict[str, Any]]:
    """Rebuild the `Detector` saved by `save_checkpoint`; returns it, its architecture and meta."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as e:
        raise NasNeckError(f"{path}: cannot read the checkpoint ({e})") from None
    arch = SearchSpace.from_dict(ckpt["arch"], source=str(path)).sample()
    config = TrainConfig(**ckpt["config"])
    model = Detector(arch, ckpt["in_channels"], ckpt["num_classes"], config)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), arch, ckpt["meta"]
