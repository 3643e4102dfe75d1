"""Brief training of neck + head on cached backbone features (the search's proxy task).

Every candidate gets the same recipe: AdamW, linear warm-up then cosine decay, gradient clipping,
a fixed seed and a fixed data order, so differences in the result come from the neck. A
non-finite loss stops the run at once with a clear reason instead of wasting the budget.

Precision (``TrainConfig.precision``, resolved by `nas_neck.device.resolve_precision`): under
bf16 or fp16 only the forward of neck and head runs in autocast (convolutions in the low
precision); the loss and the target assignment run outside it, in fp32 on the head's outputs, and
the optimizer keeps fp32 master weights. fp16 (CUDA AMP on GPUs without bf16) adds loss scaling,
since its gradients underflow; bf16 has fp32's range and needs none. Evaluation (`predict`) always
runs in fp32: it is about 1% of a trial's compute, and so the mAP of a bf16 trial differs from an
fp32 one only by how it was trained, never by rounding of the scores and boxes it is judged on.
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
from pydantic import ValidationError
from torch import Tensor, nn

from nas_neck.config import TrainConfig
from nas_neck.detect.decode import decode
from nas_neck.detect.head import DetectionHead, HeadOutput
from nas_neck.detect.loss import DetectionLoss
from nas_neck.device import Precision, autocast_context, resolve_precision
from nas_neck.dsl import Architecture, SearchSpace
from nas_neck.errors import (
    CheckpointError,
    NasNeckError,
)
from nas_neck.neck import GraphNeck
from nas_neck.safeload import load_torch_file, plain, save_torch_file

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
    """What a brief training produced; `precision` is the arithmetic it ran in."""

    losses: list[float]
    seconds: float
    steps: int
    precision: Precision
    parts: dict[str, list[float]] = field(default_factory=dict)


def train(
    model: Detector,
    cache: Any,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None = None,
    start_epoch: int = 0,
) -> TrainResult:
    """Train `model` on `cache` (a `FeatureCache` split) for `config.epochs`; per-epoch mean losses.

    `start_epoch` continues a model already trained that many epochs (a promotion in a
    multi-fidelity search): the data order picks up where it stopped (epoch e always sees the e-th
    permutation of the seed's stream), and these epochs get a schedule of their own (a fresh
    AdamW, warm-up, cosine decay to 5 %: a warm restart), so the result is the same however the
    earlier epochs were run, and deterministic given the seed.
    """
    precision = resolve_precision(config.precision, device)
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
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    order = torch.Generator().manual_seed(config.seed)
    for _ in range(start_epoch):  # the permutations of the epochs already trained
        torch.randperm(n, generator=order)
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
            with autocast_context(device, precision):
                out = model(feats)
            loss = criterion(out, targets)  # fp32: the loss casts the head's outputs up
            value = loss["loss"]
            if not torch.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(cls {loss['loss_cls'].item():.4g}, box {loss['loss_box'].item():.4g})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            step += 1
            for k in sums:
                sums[k] += float(loss[k].detach())
        losses.append(sums["loss"] / per_epoch)
        for k in parts:
            parts[k].append(sums[k] / per_epoch)
        log.debug("epoch %d/%d loss %.4f (%s)", epoch + 1, config.epochs, losses[-1], precision)
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    return TrainResult(
        losses=losses,
        seconds=time.perf_counter() - start,
        steps=step,
        precision=precision,
        parts=parts,
    )


@torch.no_grad()
def predict(
    model: Detector, cache: Any, config: TrainConfig, device: torch.device, batch_size: int = 16
) -> list[dict[str, Tensor]]:
    """Decoded detections (letterboxed input pixels, contiguous labels) for every cached image.

    Always in fp32, whatever `config.precision` trained the model (see the module docstring).
    """
    model.to(device).eval()
    size = tuple(cache.image_size) if hasattr(cache, "image_size") else None
    preds: list[dict[str, Tensor]] = []
    for i in range(0, len(cache), batch_size):
        idx = list(range(i, min(i + batch_size, len(cache))))
        feats = [f.to(device) for f in cache.features(idx)]
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


_CHECKPOINT_KEYS = ("arch", "in_channels", "num_classes", "config", "state_dict", "meta")


def save_checkpoint(
    path: str | Path, model: Detector, arch: Architecture, meta: dict[str, Any]
) -> Path:
    """Neck + head weights with everything needed to rebuild them (`load_checkpoint`).

    Everything but the weights is stored as plain data (`nas_neck.safeload.plain`: `meta`'s
    numpy scalars, paths, pydantic models become numbers, strings, dicts), so the file loads with
    ``torch.load(weights_only=True)`` and a loader never has to run code from a checkpoint.

    Written to a temporary file beside `path` and renamed into place, so a full disk or a crash
    never leaves a partial checkpoint at `path` (an older one there stays intact); a failed write
    is a `WriteError` naming the file.
    """
    path = Path(path)
    payload = {
        "arch": plain(arch.to_dict(), "arch"),
        "in_channels": plain(list(model.neck.in_channels), "in_channels"),
        "num_classes": int(model.head.num_classes),
        "config": plain(meta.get("config", {}), "meta.config"),
        "state_dict": model.state_dict(),  # tensors (an OrderedDict, with its _metadata)
        "meta": plain(meta, "meta"),
    }
    return save_torch_file(path, payload)


def load_checkpoint(path: str | Path) -> tuple[Detector, Architecture, dict[str, Any]]:
    """Rebuild the `Detector` saved by `save_checkpoint`; returns it, its architecture and meta.

    A missing, truncated or foreign file, one whose weights do not fit its architecture, or one
    that would run code when unpickled (it is read with ``weights_only=True``, `load_torch_file`)
    is a `CheckpointError` naming the file and what is wrong.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        arch = SearchSpace.from_dict(ckpt["arch"], source=str(path)).sample()
        config = TrainConfig(**ckpt["config"])
        model = Detector(arch, ckpt["in_channels"], ckpt["num_classes"], config)
        loaded = model.load_state_dict(ckpt["state_dict"], strict=False)  # shapes still checked
    except NasNeckError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: cannot rebuild the model from the checkpoint ({_first_line(e)}); "
            "the file is damaged or from another version"
        ) from None
    missing, unexpected = loaded.missing_keys, loaded.unexpected_keys
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its weights do not fit its architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); "
            "the file is damaged or from another version"
        )
    return model.eval(), arch, ckpt["meta"]


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The dict `save_checkpoint` wrote to `path`, with all its keys (else a `CheckpointError`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = load_torch_file(path)  # weights only: a file that would run code is refused
    except CheckpointError:
        raise
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_first_line(e)})") from None
    except Exception as e:  # unpickling arbitrary bytes can raise almost anything
        raise CheckpointError(
            f"{path}: not a readable checkpoint, the file is truncated, damaged or not a torch "
            f"file ({_first_line(e)})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: not a nas-neck checkpoint (it holds a {type(ckpt).__name__}, not the dict "
            "`nas-neck train` and the search write)"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: not a nas-neck checkpoint (no {', '.join(missing)} in it; "
            "a bare state_dict or another tool's file?)"
        )
    return ckpt


def _first_line(e: BaseException) -> str:
    """`e` as one short line: its type and the first sentence of its first informative line."""
    if isinstance(e, ValidationError):  # its text spans lines; name the first bad field instead
        first = e.errors()[0]
        text = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    else:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
            lines = lines[1:]  # the useful part (e.g. a size mismatch) comes next
        text = lines[0] if lines else ""
        if (stop := text.find(". ")) > 0:
            text = text[: stop + 1]
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
