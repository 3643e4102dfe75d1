"""Options shared by several commands, typed once. Their defaults come from the modules that own
them: `PROXY` (`nas_neck.config`) for the proxy task, `nas_neck.search` for storage and tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nas_neck.config import ProxyConfig, TrainConfig

PROXY = ProxyConfig()  # the defaults of every proxy-task option

Data = Annotated[
    Path | None,
    typer.Option(
        help="COCO data: a folder with train.json + val.json, or a train annotation file. Default: the built-in synthetic colony plates (generated on first use)."
    ),
]
ValData = Annotated[
    Path | None, typer.Option(help="Validation annotation file (when --data is a file).")
]
Images = Annotated[
    Path | None, typer.Option(help="Image folder (default: beside the annotations).")
]
InputSize = Annotated[
    int, typer.Option(help="Square letterbox size for training, evaluation and latency.")
]
Backbone = Annotated[str, typer.Option(help="timm backbone (frozen).")]
BackboneWeights = Annotated[
    str,
    typer.Option(
        "--backbone-weights",
        help="'auto' (packaged ImageNet weights), 'random', or a local state-dict file.",
    ),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        help=f"Training epochs per candidate (default: the quick budget, {PROXY.train.epochs})."
    ),
]
BatchSize = Annotated[
    int | None, typer.Option(help=f"Training batch size (default {PROXY.train.batch_size}).")
]
Seed = Annotated[int, typer.Option(help="Seed of training (and of the sampler in a search).")]
Threads = Annotated[
    int | None,
    typer.Option(
        help=f"CPU threads for latency measurement (default {PROXY.latency_threads}: comparable across machines and workers)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(help="Feature cache folder (default: $NAS_NECK_CACHE or ./.nas-neck-cache)."),
]
Storage = Annotated[str, typer.Option(help="Optuna storage URL, or journal:PATH for many workers.")]
TrackingUri = Annotated[str, typer.Option(help="MLflow tracking URI (a server URL on a cluster).")]


def proxy_config(
    *,
    data: Path | None,
    val_data: Path | None,
    images: Path | None,
    input_size: int,
    backbone: str,
    backbone_weights: str,
    epochs: int | None,
    batch_size: int | None,
    seed: int,
    threads: int | None,
    cache_dir: Path | None,
) -> ProxyConfig:
    """The `ProxyConfig` of the shared options; unset ones keep the config's defaults."""
    given = {"epochs": epochs, "batch_size": batch_size, "seed": seed}
    train = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    return ProxyConfig(
        data=data,
        val_data=val_data,
        images=images,
        input_size=input_size,
        backbone=backbone,
        backbone_weights=backbone_weights,
        cache_root=cache_dir,
        train=train,
        **({"latency_threads": threads} if threads is not None else {}),
    )
