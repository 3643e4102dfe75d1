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
# Its channels at each pyramid level (stride 2**level) as timm builds it, so that `nas-neck show`
# counts a neck's params and FLOPs on it without importing timm (2 to 3 s); `--backbone` checks
# take it for a timm model without asking timm. tests/test_startup.py checks both against timm.
DEFAULT_BACKBONE_CHANNELS = {2: 24, 3: 40, 4: 112, 5: 320}
# predict: a box whose inscribed disc lies this much inside a higher-scoring box's is a nested
# duplicate (`nas_neck.detect.nested`); 0.2 to 0.4 count alike in study 8 of RESULTS.md
NESTED_OVERLAP = 0.3

# Sizes in pixels, bounded where memory makes larger ones absurd (the command line refuses them
# in one line before any work; `nas_neck.cli.checks.like` reads the bounds of the fields below).
# The network input (letterbox side): any size from 64 works (maps are ceil(S / stride), no
# multiple of a stride is needed), up to 4096. At 4096 one float32 image is 200 MB, the feature
# cache holds 21 MB per image and view at P3 alone (fp16, 40 channels of the default backbone),
# and a training batch of 16 needs tens of GB of neck activations; a larger photo is tiled
# (`predict --tile`) rather than letterboxed bigger.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 64, 4096
# `predict --tile`, in photo pixels: from 32 (smaller tiles cut every colony) to 8192. Each tile
# becomes one float32 crop before it is scaled to the input: 0.8 GB at 8192 px, 3.2 GB at 16384.
# A region larger than that is better letterboxed whole (no --tile), which first reduces the
# photo's own integer pixels without a float copy.
MIN_TILE, MAX_TILE = 32, 8192
# `data synth --size`, a plate's side (the photo style: its width, 3/4 of it high): from 64 (room
# for a dish and colonies) to 4096 (16.7 MP, a phone camera's photo). A plate is drawn in float
# arrays of its size: about 0.8 GB at 4096 in each drawing process (one per CPU), 3 GB at 8192.
MIN_SYNTH_SIZE, MAX_SYNTH_SIZE = 64, 4096


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
    input_size: int = Field(256, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)  # bounds: see above
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


class SynthConfig(BaseModel):
    """The synthetic colony plates `nas-neck data synth` draws (`nas_neck.data.synth`): the
    defaults, and what each setting accepts."""

    model_config = ConfigDict(extra="forbid")

    train: int = Field(240, ge=1)  # training plates
    val: int = Field(60, ge=0)  # validation plates
    size: int = Field(384, ge=MIN_SYNTH_SIZE, le=MAX_SYNTH_SIZE)  # image side (bounds: above)
    seed: int = 0  # same seed, same bytes
    # photo: camera-like plates (`nas_neck.data.synth._PhotoPlate`), opt-in
    style: Literal["default", "photo"] = "default"
