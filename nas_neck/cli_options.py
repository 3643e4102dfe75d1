"""Options shared by the commands that train candidates (train, search, worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    int | None, typer.Option(help="Training epochs per candidate (default: the quick budget).")
]
BatchSize = Annotated[int | None, typer.Option(help="Training batch size.")]
Seed = Annotated[int, typer.Option(help="Seed of training (and of the sampler in a search).")]
Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for latency measurement (default 1: comparable across machines and workers)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(help="Feature cache folder (default: $NAS_NECK_CACHE or ./.nas-neck-cache)."),
]


def proxy_config(
    data,
    val_data,
    images,
    input_size,
    backbone,
    backbone_weights,
    epochs,
    batch_size,
    seed,
    threads,
    cache_dir,
):
    """Build the `ProxyConfig` from the shared options (unset ones keep their defaults)."""
    from nas_neck.detect.trainer import TrainConfig
    from nas_neck.proxy import ProxyConfig

    train = {
        k: v
        for k, v in {"epochs": epochs, "batch_size": batch_size, "seed": seed}.items()
        if v is not None
    }
    return ProxyConfig(
        data=data,
        val_data=val_data,
        images=images,
        input_size=input_size,
        backbone=backbone,
        backbone_weights=backbone_weights,
        cache_root=cache_dir,
        train=TrainConfig(**train),
        **({"latency_threads": threads} if threads is not None else {}),
    )
