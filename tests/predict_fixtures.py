"""Cheap detectors and photos for the predict and detector-export tests (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nas_neck.config import TrainConfig
from nas_neck.detect.trainer import Detector, save_checkpoint
from nas_neck.dsl import load_architecture

INPUT_SIZE = 64
NAMES = ["E.coli", "S.aureus"]


def make_checkpoint(path: Path, eager: bool = True, seed: int = 0) -> Path:
    """A checkpoint as `nas-neck train` writes one, untrained but with non-trivial BatchNorms;
    `eager`: its head scores every point highly (so there are boxes to decode, merge and draw),
    else it keeps the prior of 0.01 and finds nothing."""
    torch.manual_seed(seed)
    arch = load_architecture("light")
    config = TrainConfig(head_width=16, head_convs=1)
    model = Detector(arch, [40, 112, 320], num_classes=len(NAMES), config=config)
    with torch.no_grad():
        for m in model.neck.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        if eager:
            model.head.cls_pred.weight.normal_(0, 0.5)
            model.head.cls_pred.bias.fill_(1.0)
            model.head.box_pred.weight.normal_(0, 0.3)
    meta = {
        "metrics": {"map": 0.2, "ap50": 0.4},
        "config": config.model_dump(),
        "input_size": INPUT_SIZE,
        "backbone": "tf_efficientnet_lite0",
        "category_ids": [1, 2],
        "category_names": NAMES,
    }
    return save_checkpoint(path, model, arch, meta)


def plate(size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 picture with a dark dish and a few light colonies."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 30, np.uint8)
    img[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.45 * h) ** 2] = (200, 160, 90)
    for _ in range(6):
        cx, cy, r = rng.uniform(0.3 * w, 0.7 * w), rng.uniform(0.3 * h, 0.7 * h), rng.uniform(2, 6)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (240, 235, 220)
    return img


def save(image: np.ndarray, path: Path, mode: str | None = None) -> Path:
    pil = Image.fromarray(image)
    if mode == "I;16":
        pil = Image.fromarray(image[..., 0].astype(np.uint16) * 257)
    elif mode is not None:
        pil = pil.convert(mode)
    pil.save(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Predict tests on one torch thread (import it into a test module to apply it there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
