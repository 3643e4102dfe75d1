"""Fine-tune the backbone with the chosen neck before export, unfreezing it progressively.

The search never trains the backbone (its features are cached), but a deployed detector may gain
from adapting it once the neck is fixed. `finetune` trains neck + head on the frozen backbone's
cached features for the first `unfreeze_after` epochs (the search's recipe), then on images:
each later epoch unfreezes one more share of the backbone's stages, deepest first (early layers
hold the most generic features), at a tenth of the learning rate. Backbone BatchNorm statistics
stay frozen: the small batches of this recipe would corrupt them. Evaluation then runs on the
tuned backbone's features, not on the cache.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nas_neck.config import TrainConfig
from nas_neck.detect.loss import DetectionLoss
from nas_neck.detect.trainer import Detector, TrainingDiverged, train
from nas_neck.device import autocast_context, resolve_precision
from nas_neck.dsl import Architecture
from nas_neck.errors import NasNeckError

__all__ = ["BACKBONE_LR_SCALE", "finetune"]

log = logging.getLogger(__name__)

BACKBONE_LR_SCALE = 0.1  # backbone learning rate relative to the neck's and head's


def finetune(
    proxy: Any,
    arch: Architecture,
    unfreeze_after: int,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """Train `arch` on `proxy` (a `ProxyTask`) for its `train.epochs`, unfreezing the backbone
    after `unfreeze_after` of them; returns the `Outcome` (evaluated with the tuned backbone)
    and the tuned backbone's state dict (timm `features_only` names)."""
    from nas_neck.proxy import Outcome

    cfg: TrainConfig = proxy.config.train
    if not 0 <= unfreeze_after < cfg.epochs:
        raise NasNeckError(
            f"--unfreeze-after {unfreeze_after} leaves no epoch to tune the backbone in; "
            f"use a value below --retrain-epochs {cfg.epochs}"
        )
    train_cache, _, frozen = proxy.caches(arch.inputs)
    device = proxy.device
    torch.manual_seed(cfg.seed)
    model = Detector(arch, frozen.channels, proxy.num_classes, cfg)
    report = (lambda e, loss: on_epoch(e, cfg.epochs, loss)) if on_epoch else None
    start = time.perf_counter()
    losses: list[float] = []
    if unfreeze_after:
        phase1 = cfg.model_copy(update={"epochs": unfreeze_after})
        losses += train(model, train_cache, phase1, device, on_epoch=report).losses
    body = copy.deepcopy(frozen.body).to(device)  # the proxy's own stays frozen for its caches
    normalize = _Normalize(frozen.mean, frozen.std).to(device)
    losses += _tune(model, body, normalize, proxy.train_set, cfg, unfreeze_after, device, report)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    val = _TunedFeatures(body, normalize, proxy.val_set, device, cfg.batch_size)
    metrics = proxy.evaluate(model, val)
    timings = {"train_s": train_s, "eval_s": time.perf_counter() - start}
    state = {k: v.detach().cpu() for k, v in body.state_dict().items()}
    precision = resolve_precision(cfg.precision, device)
    return Outcome(model, arch, metrics, losses, timings, precision), state


class _Normalize(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


def _tune(
    model: Detector,
    body: nn.Module,
    normalize: nn.Module,
    dataset: Any,
    cfg: TrainConfig,
    first: int,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None,
) -> list[float]:
    """Epochs `first + 1 .. cfg.epochs` on images, unfreezing `body` progressively."""
    model.to(device).train()
    stages = _stages(body)
    body.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in head if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in head if p.ndim <= 1], "weight_decay": 0.0},
            {
                "params": list(body.parameters()),
                "lr": cfg.lr * BACKBONE_LR_SCALE,
                "weight_decay": cfg.weight_decay,
            },
        ],
        lr=cfg.lr,
    )
    epochs = cfg.epochs - first
    per_epoch = max(1, len(dataset) // cfg.batch_size)
    total = per_epoch * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    criterion = DetectionLoss()
    order = torch.Generator().manual_seed(cfg.seed + first)
    losses = []
    for epoch in range(epochs):
        unfrozen = math.ceil((epoch + 1) * len(stages) / epochs)
        for group in stages[-unfrozen:]:
            for p in group:
                p.requires_grad_(True)
        body.train()
        for m in body.modules():  # keep the pretrained statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        log.debug(
            "epoch %d: %d of %d backbone stages trainable", first + epoch + 1, unfrozen, len(stages)
        )
        perm = torch.randperm(len(dataset), generator=order).tolist()
        total_loss = 0.0
        for b in range(per_epoch):
            images, targets = _batch(
                dataset, perm[b * cfg.batch_size : (b + 1) * cfg.batch_size], order
            )
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with autocast_context(device, cfg.precision):
                out = model(body(normalize(images.to(device))))
            loss = criterion(out, targets)["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {first + epoch + 1} (backbone tuning)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainable = [p for p in [*head, *body.parameters()] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach())
        losses.append(total_loss / per_epoch)
        if on_epoch is not None:
            on_epoch(first + epoch + 1, losses[-1])
    body.eval()
    return losses


def _stages(body: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters grouped by stage, shallow to deep: `conv_stem`, `blocks.3`,
    `layer2.1`... (a top-level module, or an entry of a top-level Sequential)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in body.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        groups.setdefault(key, []).append(p)
    return list(groups.values())


def _batch(
    dataset: Any, indices: list[int], gen: torch.Generator
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Letterboxed images with random horizontal and vertical flips (boxes flipped alike)."""
    images, targets = [], []
    for i in indices:
        image, target = dataset[i]
        boxes = target["boxes"].clone()
        size = image.shape[-1]
        if torch.rand(1, generator=gen) < 0.5:
            image, boxes[:, [0, 2]] = image.flip(-1), size - boxes[:, [2, 0]]
        if torch.rand(1, generator=gen) < 0.5:
            image, boxes[:, [1, 3]] = image.flip(-2), size - boxes[:, [3, 1]]
        images.append(image)
        targets.append({"boxes": boxes, "labels": target["labels"]})
    return torch.stack(images), targets


class _TunedFeatures:
    """Validation features of the tuned backbone, in the shape `ProxyTask.evaluate` reads from a
    feature cache (`len`, `features(indices)`, `image_size`)."""

    def __init__(
        self, body: nn.Module, normalize: nn.Module, dataset: Any, device: torch.device, batch: int
    ) -> None:
        self.image_size = (dataset.size, dataset.size)
        levels: list[list[Tensor]] = []
        body.eval()
        with torch.no_grad():
            for i in range(0, len(dataset), batch):
                images = torch.stack(
                    [dataset[j][0] for j in range(i, min(i + batch, len(dataset)))]
                )
                levels.append([f.float().cpu() for f in body(normalize(images.to(device)))])
        self._maps = [torch.cat(parts) for parts in zip(*levels, strict=True)]

    def __len__(self) -> int:
        return len(self._maps[0])

    def features(self, indices: list[int]) -> list[Tensor]:
        return [m[indices] for m in self._maps]
