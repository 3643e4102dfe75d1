"""The settings of the proxy task every candidate is scored on: data, backbone, input size and
the training recipe.

Plain pydantic models with no heavy imports, so the command line, the search settings and the
worker processes read them (and their defaults) without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# predict: a box whose inscribed disc lies this much inside a higher-scoring box's is a nested
# duplicate (`nas_neck.detect.nested`); 0.2 to 0.4 count alike in study 8 of RESULTS.md
NESTED_OVERLAP = 0.3


class TrainConfig(BaseModel):
    """The proxy-training recipe shared by every candidate."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float = Field(10.0, gt=0)
    seed: int = 0
    head_width: int = Field(64, ge=8)
    head_convs: int = Field(2, ge=1)
    score_thresh: float = 0.05
    count_thresh: float = 0.35
    max_det: int = 300
    # Training and evaluation arithmetic: fp32, bf16 autocast, or auto (bf16 where the CPU has it
    # natively, AMP on CUDA, fp32 otherwise); see `nas_neck.device.resolve_precision`.
    # auto is the default since bf16 kept the ranking of 12 architectures (Kendall tau 1.00,
    # study 6 of RESULTS.md); where bf16 is not native it resolves to fp32.
    precision: Literal["fp32", "bf16", "auto"] = "auto"


class ProxyConfig(BaseModel):
    """Data, backbone, input size and training budget of the proxy task."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = None  # a folder with train.json + val.json, or a train annotation file
    val_data: Path | None = None
    images: Path | None = None
    input_size: int = Field(256, ge=64)
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str = "auto"
    views: tuple[int, ...] = (0, 1, 2)
    cache_root: Path | None = None
    latency_threads: int = Field(1, ge=1)  # batch-1, 1-thread CPU latency: comparable across hosts
    latency_runs: int = Field(100, ge=10)
    latency_warmup: int = Field(3, ge=1)
    latency_target: Literal["torch", "onnxruntime"] = "torch"  # what runs the timed module
    latency_scope: Literal["neck", "detector"] = "neck"  # detector: neck + the fixed head
    train: TrainConfig = TrainConfig()
