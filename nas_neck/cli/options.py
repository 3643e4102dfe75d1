"""Options shared by several commands, typed once with what they accept (`cli/checks.py`). Their
defaults and bounds come from the modules that own them: `PROXY` (`nas_neck.config`) for the
proxy task, `nas_neck.search` for storage and tracking."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from nas_neck.cli import checks
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
INPUT_SIZE = checks.like(ProxyConfig, "input_size")  # any size from 64 (maps are ceil(S / stride))
InputSize = Annotated[
    int,
    typer.Option(
        help=f"Square letterbox size for training, evaluation and latency ({INPUT_SIZE.expected})."
    ),
    INPUT_SIZE,
]
Backbone = Annotated[str, typer.Option(help="timm backbone (frozen)."), checks.BACKBONE]
BackboneWeights = Annotated[
    str,
    typer.Option(
        "--backbone-weights",
        help="'auto' (packaged ImageNet weights), 'random', or a local state-dict file.",
    ),
    checks.BACKBONE_WEIGHTS,
]
Epochs = Annotated[
    int | None,
    typer.Option(
        help=f"Training epochs per candidate (default: the quick budget, {PROXY.train.epochs})."
    ),
    checks.like(TrainConfig, "epochs"),
]
BatchSize = Annotated[
    int | None,
    typer.Option(help=f"Training batch size (default {PROXY.train.batch_size})."),
    checks.like(TrainConfig, "batch_size"),
]
Seed = Annotated[
    int, typer.Option(help="Seed of training (and of the sampler in a search)."), checks.SEED
]
Threads = Annotated[
    int | None,
    typer.Option(
        help=f"CPU threads for latency measurement (default {PROXY.latency_threads}: comparable across machines and workers)."
    ),
    checks.like(ProxyConfig, "latency_threads"),
]
Precision = Annotated[
    str,
    typer.Option(
        help="Training and evaluation arithmetic: fp32, bf16 (autocast), or auto (bf16 where the "
        "CPU has it natively, AMP on CUDA, fp32 otherwise); recorded with every trial."
    ),
    checks.OneOf(typing.get_args(TrainConfig.model_fields["precision"].annotation)),
]
LatencyTarget = Annotated[
    str,
    typer.Option(
        help="What runs the timed module: torch (eager) or onnxruntime (the module exported to "
        "ONNX, same thread count)."
    ),
    checks.OneOf(typing.get_args(ProxyConfig.model_fields["latency_target"].annotation)),
]
LatencyScope = Annotated[
    str,
    typer.Option(help="What is timed: neck, or detector (neck + the fixed head)."),
    checks.OneOf(typing.get_args(ProxyConfig.model_fields["latency_scope"].annotation)),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(help="Feature cache folder (default: $NAS_NECK_CACHE or ./.nas-neck-cache)."),
]
Storage = Annotated[
    str,
    typer.Option(help="Optuna storage URL, or journal:PATH for many workers."),
    checks.STORAGE,
]
TrackingUri = Annotated[str, typer.Option(help="MLflow tracking URI (a server URL on a cluster).")]
Artifacts = Annotated[
    str | None,
    typer.Option(
        help="Folder (or URI, e.g. s3://...) for the MLflow artifacts of a new study's experiment. "
        "Default: beside a sqlite:/// tracking database (<its name>-artifacts/), or the MLflow "
        "server's."
    ),
]


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
    precision: str,
    latency_target: str,
    latency_scope: str,
) -> ProxyConfig:
    """The `ProxyConfig` of the shared options; unset ones keep the config's defaults. The one
    place they are checked together: the data paths exist, and the config validates (a pydantic
    error reaches the user as `--OPTION: expected ...` through `friendly`)."""
    check_data_paths(data, val_data, images)
    given = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "precision": precision}
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
        latency_target=latency_target,
        latency_scope=latency_scope,
        **({"latency_threads": threads} if threads is not None else {}),
    )


def check_data_paths(data: Path | None, val_data: Path | None, images: Path | None) -> None:
    """--data (a file or folder), --val-data (a file) and --images (a folder) exist, if given."""
    checks.existing("--data", data)
    checks.existing("--val-data", val_data, "file")
    checks.existing("--images", images, "folder")


PROXY_OPTIONS = tuple(inspect.signature(proxy_config).parameters)  # data, val_data, ... cache_dir


def proxy_from(params: Mapping[str, Any]) -> ProxyConfig:
    """`proxy_config` of a command's parsed options (`ctx.params`), which take the shared proxy
    options above under their names."""
    return proxy_config(**{name: params[name] for name in PROXY_OPTIONS})
