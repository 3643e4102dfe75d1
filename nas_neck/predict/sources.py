"""Where a detector to predict with comes from: a training checkpoint or an export folder.

Every source gives the same `LoadedModel`: a function from letterboxed images (B, 3, S, S) in
[0, 1] to the head's raw outputs (`HeadOutput`), the training input size and the classes. One
decoder (`nas_neck.detect.decode`) then turns raw outputs into boxes for all of them, so a
checkpoint, the exported torch module and the exported ONNX file give the same detections.

- checkpoint (`nas-neck train`, or a study trial's): the frozen backbone named in its meta,
  with `backbone_weights` (default: the packaged ImageNet weights training used), + neck + head;
- export folder with ``--detector`` (`nas_neck.export.detector`): ``detector.onnx`` in ONNX
  Runtime, or ``detector.py`` (the standalone torch module) when asked for torch or when ONNX
  Runtime cannot run it;
- export folder without it but with the head (``head.safetensors``): the standalone ``neck.py``,
  the head rebuilt from ``export.json``, and the backbone (its tuned weights when exported).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nas_neck.config import DEFAULT_BACKBONE
from nas_neck.detect.decode import decode
from nas_neck.detect.head import DetectionHead, HeadOutput, anchor_points
from nas_neck.device import default_device
from nas_neck.errors import CheckpointError, NasNeckError

__all__ = ["AGNOSTIC_NAME", "LoadedModel", "from_checkpoint", "from_export", "load_model"]

log = logging.getLogger(__name__)

AGNOSTIC_NAME = "colony"


@dataclass
class LoadedModel:
    """A detector ready to run: `raw(images)` -> `HeadOutput` (images on `device`)."""

    raw: Callable[[Tensor], HeadOutput]
    input_size: int
    category_names: list[str]
    category_ids: list[int]
    device: torch.device
    origin: str
    runtime: str = "torch"
    info: dict[str, Any] = field(default_factory=dict)

    def detect(
        self,
        images: Tensor,
        score_thresh: float = 0.05,
        max_det: int = 300,
        agnostic: bool = False,
        nms_iou: float = 0.6,
    ) -> list[dict[str, Tensor]]:
        """Decoded detections per image, in input pixels (labels 0 for all when `agnostic`)."""
        with torch.no_grad():
            out = self.raw(images.to(self.device))
        if agnostic and out.cls_logits.shape[-1] > 1:
            out.cls_logits = out.cls_logits.max(-1, keepdim=True).values
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return [
            {k: v.cpu() for k, v in p.items()}
            for p in decode(
                out, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det, image_size=size
            )
        ]


def load_model(
    checkpoint: str | Path | None = None,
    export_dir: str | Path | None = None,
    device: torch.device | None = None,
    backbone_weights: str = "auto",
    runtime: str = "auto",
) -> LoadedModel:
    """The model of exactly one of `checkpoint` and `export_dir`."""
    if (checkpoint is None) == (export_dir is None):
        raise NasNeckError("pass exactly one model source: a checkpoint or an export folder")
    if checkpoint is not None:
        return from_checkpoint(checkpoint, device, backbone_weights)
    return from_export(export_dir, device, runtime)  # type: ignore[arg-type]


def from_checkpoint(
    path: str | Path, device: torch.device | None = None, backbone_weights: str = "auto"
) -> LoadedModel:
    """Backbone + neck + head of a training checkpoint (`nas_neck.detect.trainer`)."""
    from nas_neck.backbone import FrozenBackbone
    from nas_neck.detect.trainer import load_checkpoint

    device = device or default_device()
    model, arch, meta = load_checkpoint(path)
    name = meta.get("backbone", DEFAULT_BACKBONE)
    backbone = FrozenBackbone(name, arch.inputs, backbone_weights)
    if list(backbone.channels) != list(model.neck.in_channels):
        raise CheckpointError(
            f"{path}: its neck reads {model.neck.in_channels} channels but backbone {name} at "
            f"levels {list(arch.inputs)} gives {backbone.channels}"
        )
    backbone.to(device)
    model.to(device).eval()

    def raw(images: Tensor) -> HeadOutput:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return model(backbone(images), size)

    k = model.head.num_classes
    return LoadedModel(
        raw=raw,
        input_size=int(meta.get("input_size", 256)),
        category_names=list(meta.get("category_names") or [f"class{i + 1}" for i in range(k)]),
        category_ids=list(meta.get("category_ids") or range(1, k + 1)),
        device=device,
        origin=f"{arch.name} [{arch.hash}] from checkpoint {path}",
        info={"arch": arch.name, "hash": arch.hash, "backbone": name},
    )


def from_export(
    folder: str | Path, device: torch.device | None = None, runtime: str = "auto"
) -> LoadedModel:
    """The detector of an export folder (module docstring); `runtime`: auto, onnx or torch."""
    folder = Path(folder)
    manifest_file = folder / "export.json"
    if not manifest_file.is_file():
        raise NasNeckError(f"{folder}: not an export folder (no export.json; `nas-neck export`)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as e:
        raise NasNeckError(f"{manifest_file}: unreadable ({e})") from None
    device = device or default_device()
    search = manifest.get("search", {})
    names = list(manifest.get("categories") or [])
    detector = manifest.get("detector")
    if detector is not None:
        size = int(detector.get("input_size") or search.get("input_size") or 256)
        strides = list(detector["out_strides"])
        if runtime in ("auto", "onnx") and (folder / detector["onnx"]).is_file():
            raw, used = _onnx_raw(folder / detector["onnx"], strides, device, runtime), "onnx"
        elif runtime == "onnx":
            raise NasNeckError(f"{folder}: no {detector['onnx']} to run in ONNX Runtime")
        else:
            raw, used = _standalone_raw(folder, detector, device), "torch"
        k = int(detector["num_classes"])
    elif "head" in manifest:
        if runtime == "onnx":
            raise NasNeckError(
                f"{folder}: exported without --detector, so there is no ONNX detector to run"
            )
        raw, k = _neck_head_raw(folder, manifest, device), int(manifest["head"]["num_classes"])
        size, used = int(search.get("input_size") or 256), "torch"
    else:
        raise NasNeckError(
            f"{folder}: the export has no detection head; export again with `--detector`"
        )
    names = names or [f"class{i + 1}" for i in range(k)]
    return LoadedModel(
        raw=raw,
        input_size=size,
        category_names=names,
        category_ids=list(range(1, k + 1)),
        device=device,
        origin=f"{manifest.get('name')} [{manifest.get('hash')}] from export {folder}",
        runtime=used,
        info={"arch": manifest.get("name"), "hash": manifest.get("hash")},
    )


def _points(cls_logits: Tensor, box_ltrb: Tensor, size: tuple[int, int], strides: list[int]):
    """The `HeadOutput` of raw head outputs for an input of `size` (H, W)."""
    sizes = [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in strides]
    if sum(h * w for h, w in sizes) != cls_logits.shape[1]:
        raise NasNeckError(
            f"the detector gave {cls_logits.shape[1]} points for a {size[1]}x{size[0]} input, "
            f"not the {sum(h * w for h, w in sizes)} of strides {strides}"
        )
    points, point_strides = anchor_points(sizes, strides, cls_logits.device)
    return HeadOutput(cls_logits, box_ltrb, points, point_strides, sizes, size)


def _onnx_raw(path: Path, strides: list[int], device: torch.device, runtime: str):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise NasNeckError(f"{path}: ONNX Runtime cannot load it ({e})") from None
    name = session.get_inputs()[0].name

    def raw(images: Tensor) -> HeadOutput:
        cls, box = session.run(None, {name: images.detach().float().cpu().numpy()})
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return _points(torch.from_numpy(cls), torch.from_numpy(box), size, strides)

    return raw


def _standalone_raw(folder: Path, detector: dict[str, Any], device: torch.device):
    from nas_neck.export.detector import load_detector_module

    module = load_detector_module(folder / detector["python"])
    net = module.Detector.from_pretrained(folder).to(device).eval()
    strides = list(detector["out_strides"])

    def raw(images: Tensor) -> HeadOutput:
        cls, box = net(images)
        return _points(cls, box, (int(images.shape[-2]), int(images.shape[-1])), strides)

    return raw


def _neck_head_raw(folder: Path, manifest: dict[str, Any], device: torch.device):
    from safetensors.torch import load_file

    from nas_neck.backbone import FrozenBackbone
    from nas_neck.export import load_standalone

    h = manifest["head"]
    neck = load_standalone(folder / "neck.py").Neck.from_pretrained(folder / "neck.safetensors")
    head = DetectionHead(
        h["in_channels"], h["strides"], h["num_classes"], h["width"], h["num_convs"]
    )
    head.load_state_dict(load_file(str(folder / h["file"])))
    name = manifest.get("search", {}).get("backbone") or DEFAULT_BACKBONE
    backbone = FrozenBackbone(name, manifest["in_levels"], "auto")
    if manifest.get("backbone_weights"):
        backbone.body.load_state_dict(load_file(str(folder / manifest["backbone_weights"])))
    backbone.to(device)
    neck.to(device).eval()
    head.to(device).eval()

    def raw(images: Tensor) -> HeadOutput:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return head.predict(neck(backbone(images)), size)

    return raw
