"""Supernet training on the cached features with the fixed head: one path per step.

Each step draws a path of the space and trains only its slices (SPOS: Guo et al. 2020), with
the proxy recipe's optimizer (AdamW, decay on weights only, warm-up then cosine decay over all
steps, gradient clipping) and precision (`nas_neck.device`: autocast of the forward only, loss
scaling for fp16). Path samplers:

* ``uniform`` (default): every parameter drawn uniformly and independently, seeded by
  (seed, step);
* ``fair`` (FairNAS, Chu et al. 2021): every parameter with k options takes each of them once
  in every k consecutive steps (a seeded permutation per block of k steps), so no op choice
  gets more updates than another, not even by chance.

``sandwich`` (BigNAS / slimmable networks' sandwich rule, for widths): each step also trains
the drawn path at the largest and at the smallest width of every width parameter (the other
choices as drawn); the three losses' gradients are accumulated into one update.

The run is checkpointed at every epoch's end into ``<out>/supernet.pt`` (atomically; plain
tensors, numbers and strings only, so it loads with ``torch.load(weights_only=True)``) and
resumed from there when the same command runs again: the step counter, data order and path
draws continue where they stopped. The loss curve (per epoch and per step) goes to
``<out>/losses.json``, and to an MLflow run when a tracking URI is given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.detect.loss import DetectionLoss
from nas_neck.detect.trainer import TrainingDiverged
from nas_neck.device import autocast_context, resolve_precision
from nas_neck.dsl import Architecture, RandomSampler, SearchSpace, load_space
from nas_neck.errors import (
    CheckpointError,
    WriteError,
    describe_os_error,
)
from nas_neck.safeload import load_torch_file, plain, save_torch_file
from nas_neck.supernet.supernet import Supernet, SupernetDetector

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT",
    "FairSampler",
    "SupernetRun",
    "load_supernet",
    "path_batch",
    "train_supernet",
]

CHECKPOINT = "supernet.pt"
SAMPLERS = ("uniform", "fair")
_FORMAT = 1


class FairSampler:
    """FairNAS draws: a parameter with k options takes each once per k consecutive steps.

    The order within each block of k steps is a permutation seeded by (seed, parameter,
    block), so the draw of any step is known without replaying the earlier ones (resuming
    continues the same sequence). Float parameters are drawn uniformly.
    """

    def __init__(self, step: int, seed: int = 0) -> None:
        self.step = step
        self.seed = seed
        self.params: dict[str, Any] = {}

    def _pick(self, name: str, options: Sequence[Any]) -> Any:
        k = len(options)
        block, position = divmod(self.step, k)
        order = list(range(k))
        random.Random(f"{self.seed}/{name}/{block}").shuffle(order)
        self.params[name] = value = options[order[position]]
        return value

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return self._pick(name, list(options))

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self._pick(name, list(range(low, high + 1, step)))

    def float(self, name: str, low: float, high: float, log: bool = False) -> float:
        rng = random.Random(f"{self.seed}/{name}/{self.step}")
        if log:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        self.params[name] = value
        return value


class _Widths:
    """Another sampler's draws, with every width parameter at its extreme (`pick` = max / min)."""

    def __init__(self, base: Any, pick: Callable[[Sequence[int]], int]) -> None:
        self.base = base
        self.pick = pick
        self.params: dict[str, Any] = {}

    @staticmethod
    def _is_width(name: str) -> bool:
        return name == "width" or name.endswith(".width")

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        value = self.base.choice(name, options)  # drawn anyway: later draws stay the same
        if self._is_width(name):
            value = self.pick(list(options))
        self.params[name] = value
        return value

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        value = self.base.int(name, low, high, step)
        if self._is_width(name):
            value = self.pick(list(range(low, high + 1, step)))
        self.params[name] = value
        return value

    def float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.params[name] = value = self.base.float(name, low, high, log)
        return value


def _base_sampler(sampler: str, step: int, seed: int) -> Any:
    if sampler == "fair":
        return FairSampler(step, seed)
    return RandomSampler(seed * 1_000_003 + step)


def path_batch(
    space: SearchSpace, step: int, sampler: str = "uniform", sandwich: bool = False, seed: int = 0
) -> list[Architecture]:
    """The path(s) trained at `step`: one drawn path, or (sandwich) the widest, narrowest and
    drawn one."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if not sandwich:
        return [space.sample(_base_sampler(sampler, step, seed))]
    return [
        space.sample(_Widths(_base_sampler(sampler, step, seed), max)),
        space.sample(_Widths(_base_sampler(sampler, step, seed), min)),
        space.sample(_base_sampler(sampler, step, seed)),
    ]


@dataclass
class SupernetRun:
    """What `train_supernet` produced: the model, its loss curve and where it is saved."""

    model: SupernetDetector
    losses: list[float]  # per epoch (all epochs, earlier runs of a resumed training included)
    step_losses: list[float]
    epochs: int
    steps: int
    precision: str
    checkpoint: Path
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 5 % at `total` steps (the proxy recipe's shape)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_supernet(
    space: SearchSpace | str | Path,
    config: ProxyConfig | None = None,
    *,
    epochs: int,
    out: str | Path,
    sampler: str = "uniform",
    sandwich: bool = False,
    resume: bool = True,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    device: torch.device | None = None,
    proxy: Any = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> SupernetRun:
    """Train the supernet of `space` for `epochs` epochs in all on the proxy task's cached
    training features (`config`, or the `proxy` given); see the module docstring.

    With `resume` (the default) an existing ``<out>/supernet.pt`` of the same space and
    settings is continued up to `epochs`; a different one is refused (`CheckpointError`).
    """
    from nas_neck.proxy import ProxyTask

    space = space if isinstance(space, SearchSpace) else load_space(space)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    proxy = proxy or ProxyTask(config, device)
    config = proxy.config
    cfg: TrainConfig = config.train
    device = device or proxy.device
    out = Path(out)
    path = out / CHECKPOINT
    train_cache, _, backbone = proxy.caches(space.inputs)
    settings = {
        "space": space.name,
        "sampler": sampler,
        "sandwich": sandwich,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "backbone": config.backbone,
        "input_size": config.input_size,
    }
    torch.manual_seed(cfg.seed)
    model = SupernetDetector(Supernet(space, backbone.channels), proxy.num_classes, cfg)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    n = len(train_cache)
    per_epoch = max(1, n // cfg.batch_size)
    total = per_epoch * epochs
    schedule = _schedule(cfg.warmup_steps, total)
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start_epoch, step = 0, 0
    losses: list[float] = []
    step_losses: list[float] = []
    run_id = None
    if resume and path.exists():
        ckpt = _read(path)
        if ckpt["settings"] != settings:
            changed = sorted(k for k in settings if ckpt["settings"].get(k) != settings[k])
            raise CheckpointError(
                f"{path}: holds a supernet trained with other settings ({', '.join(changed)}); "
                "pass another --out or --no-resume"
            )
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        losses, step_losses = list(ckpt["losses"]), list(ckpt["step_losses"])
        run_id = ckpt.get("mlflow_run_id")
        log.info("resuming the supernet at epoch %d (step %d) from %s", start_epoch, step, path)
    tracker = _tracker(tracking_uri, experiment or f"supernet-{space.name}")
    if tracker is not None and run_id is None:
        run = tracker.client.create_run(
            tracker.experiment_id,
            run_name=f"supernet-{space.name}",
            tags={"nas_neck.supernet": space.name},
        )
        run_id = run.info.run_id
        tracker.log_params(
            run_id, {**settings, "epochs": epochs, "lr": cfg.lr, "precision": precision}
        )
    criterion = DetectionLoss()
    order = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start_epoch):  # the permutations of the epochs already trained
        torch.randperm(n, generator=order)
    start = time.perf_counter()
    meta = {
        "space_yaml": _space_text(space),
        "in_channels": list(backbone.channels),
        "num_classes": proxy.num_classes,
        "config": cfg.model_dump(),
        "category_ids": list(proxy.train_set.category_ids),
        "category_names": list(proxy.train_set.category_names),
    }
    try:
        for epoch in range(start_epoch, epochs):
            perm = torch.randperm(n, generator=order).tolist()
            total_loss = 0.0
            for b in range(per_epoch):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                feats = [f.to(device, non_blocking=True) for f in train_cache.features(idx)]
                targets = [
                    {k: v.to(device) for k, v in t.items()} for t in train_cache.targets(idx)
                ]
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * schedule(step)
                optimizer.zero_grad(set_to_none=True)
                archs = path_batch(space, step, sampler, sandwich, cfg.seed)
                value = 0.0
                for arch in archs:
                    with autocast_context(device, precision):
                        out_ = model(feats, arch)
                    loss = criterion(out_, targets)["loss"] / len(archs)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"supernet loss became {loss.item()} at epoch {epoch + 1}, step "
                            f"{step + 1} (path {arch.hash})"
                        )
                    scaler.scale(loss).backward()
                    value += float(loss.detach())
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                step_losses.append(value)
                total_loss += value
            losses.append(total_loss / per_epoch)
            log.info("supernet epoch %d/%d loss %.4f", epoch + 1, epochs, losses[-1])
            _save(
                path,
                plain(
                    {
                        "format": _FORMAT,
                        "kind": "nas-neck-supernet",
                        "settings": settings,
                        **meta,
                        "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch + 1,
                        "step": step,
                        "losses": losses,
                        "step_losses": step_losses,
                        "precision": precision,
                        "mlflow_run_id": run_id,
                    },
                    "checkpoint",
                ),
            )
            _write_losses(out, losses, step_losses)
            if tracker is not None:
                tracker.log_metrics(run_id, {"loss": losses[-1]}, step=epoch + 1)
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs, losses[-1])
    except BaseException:
        if tracker is not None and run_id is not None:
            with contextlib.suppress(Exception):
                tracker.end(run_id, "FAILED")
        raise
    if tracker is not None:
        tracker.log_series(run_id, "step_loss", step_losses)
        tracker.end(run_id)
    _write_losses(out, losses, step_losses)
    return SupernetRun(
        model.eval(),
        losses,
        step_losses,
        len(losses),
        step,
        precision,
        path,
        time.perf_counter() - start,
        meta={**meta, "settings": settings, "mlflow_run_id": run_id},
    )


def _tracker(uri: str | None, experiment: str) -> Any:
    if not uri:
        return None
    from nas_neck.search.tracking import Tracker, check_reachable

    check_reachable(uri)
    return Tracker(uri, experiment)


def _space_text(space: SearchSpace) -> str | None:
    """The space's YAML text (a shipped space's or a user's file), kept in the checkpoint so
    it rebuilds the same supernet wherever it is loaded."""
    if space.source and Path(space.source).is_file():
        return Path(space.source).read_text()
    return None


def _write_losses(out: Path, losses: list[float], step_losses: list[float]) -> None:
    try:
        (out / "losses.json").write_text(
            json.dumps({"epoch_loss": losses, "step_loss": step_losses})
        )
    except OSError as e:
        raise WriteError(f"{out / 'losses.json'}: cannot write: {describe_os_error(e)}") from None


def _save(path: Path, payload: dict[str, Any]) -> None:
    save_torch_file(path, payload, "the supernet checkpoint")


def _read(path: Path) -> dict[str, Any]:
    try:
        ckpt = load_torch_file(path)  # weights-only: nothing in the file runs
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable supernet checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "nas-neck-supernet":
        raise CheckpointError(f"{path}: not a nas-neck supernet checkpoint")
    return ckpt


def load_supernet(
    path: str | Path, space: SearchSpace | str | Path | None = None
) -> tuple[SupernetDetector, dict[str, Any]]:
    """The `SupernetDetector` saved by `train_supernet` at `path` (a file or its folder), in
    eval mode, and the checkpoint's metadata (settings, losses, categories, config).

    The space comes from the checkpoint (its YAML is saved with it) unless `space` is given.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no such supernet checkpoint")
    ckpt = _read(path)
    if space is None:
        if ckpt.get("space_yaml") is None:
            raise CheckpointError(f"{path}: holds no space; pass the space it was trained on")
        space = SearchSpace.from_dict(yaml.safe_load(ckpt["space_yaml"]), source=str(path))
    elif not isinstance(space, SearchSpace):
        space = load_space(space)
    config = TrainConfig(**ckpt["config"])
    model = SupernetDetector(Supernet(space, ckpt["in_channels"]), ckpt["num_classes"], config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: its weights do not fit the supernet of space {space.name!r} "
            f"({str(e).splitlines()[0][:160]})"
        ) from None
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scaler")}
    return model.eval(), meta
