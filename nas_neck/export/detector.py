"""The whole detector (frozen backbone + neck + head) as one ONNX file and one torch module that
run without nas_neck: what `nas-neck export --detector` adds to an export folder.

Files (beside the `neck.py` and `head.safetensors` `export_neck` writes):

- ``detector.py``: ``Detector(nn.Module)`` taking images (B, 3, H, W), RGB in [0, 1], any H
  and W, and returning the head's raw outputs (``cls_logits`` [B, N, K], ``box_ltrb`` [B, N, 4]
  in input pixels); the backbone is built by timm (same version: the weight names are timm's),
  the neck imported from ``neck.py`` beside it, the head's source copied in. It also holds
  ``letterbox`` (the resizing training used), ``postprocess`` (sigmoid, threshold, top-k,
  class-aware NMS, clipping: what ``nas_neck.detect.decode`` does), ``nested_keep`` (copied
  from ``nas_neck.detect.nested``) and ``detect_image``;
- ``detector.safetensors``: its weights;
- ``detector.onnx``: the same forward (normalisation inside the graph), dynamic batch and sides;
  decoding and NMS stay outside the graph, as the documented post-process in ``detector.py``
  (NMS in ONNX would need a fixed cap on boxes per image, and dense plates exceed any small one).

Both are checked before the export returns: the torch module and the ONNX file (in ONNX
Runtime) against nas_neck's own backbone + neck + head at two input sizes, and
``postprocess`` against ``nas_neck.detect.decode``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from nas_neck.config import NESTED_OVERLAP
from nas_neck.detect.decode import decode
from nas_neck.detect.head import DetectionHead, HeadOutput, anchor_points
from nas_neck.detect.nested import nested_keep
from nas_neck.errors import NasNeckError
from nas_neck.export.source import _copies

__all__ = ["DETECTOR_ATOL", "DetectorReport", "export_detector", "load_detector_module"]

log = logging.getLogger(__name__)

DETECTOR_ATOL = 1e-3  # relative to the output's scale: a whole backbone's float reordering
_OPSET = 17


@dataclass
class DetectorReport:
    """What `export_detector` wrote and how far each runtime is from nas_neck's detector."""

    files: list[Path] = field(default_factory=list)
    torch_diffs: dict[str, float] = field(default_factory=dict)  # input shape -> max |diff|
    onnx_diffs: dict[str, float] = field(default_factory=dict)
    decode_diff: float = 0.0  # max |postprocess - nas_neck decode| over boxes and scores
    manifest: dict[str, Any] = field(default_factory=dict)


def export_detector(
    backbone: nn.Module,
    neck: nn.Module,
    head: DetectionHead,
    out_dir: str | Path,
    input_size: int,
    categories: list[str] | None = None,
    onnx: bool = True,
) -> DetectorReport:
    """Write ``detector.py``, ``detector.safetensors`` and (with `onnx`) ``detector.onnx`` into
    `out_dir`, which already holds `neck`'s export (`neck.py`, `neck.safetensors`).

    `backbone` is a `nas_neck.backbone.FrozenBackbone` (its ``body``, ``name``, ``levels``,
    ``mean`` and ``std`` are used); `neck` the trained `GraphNeck` the export came from.
    """
    out = Path(out_dir)
    if not (out / "neck.py").is_file():
        raise NasNeckError(f"{out}: export the neck first (no neck.py there)")
    report = DetectorReport()
    k = head.num_classes
    names = list(categories or [f"class{i + 1}" for i in range(k)])
    settings = {
        "backbone": backbone.name,
        "out_indices": [lvl - 1 for lvl in backbone.levels],  # timm CNNs: stride 2**(i+1)
        "mean": [float(v) for v in backbone.mean.flatten()],
        "std": [float(v) for v in backbone.std.flatten()],
        "input_size": int(input_size),
        "categories": names,
        "strides": list(head.strides),
        "head": {
            "in_channels": [p[0].in_channels for p in head.proj],
            "strides": list(head.strides),
            "num_classes": k,
            "width": head.cls_pred.in_channels,
            "num_convs": len(head.cls_tower),
        },
    }
    report.files.append(_write(out / "detector.py", detector_source(settings)))
    module = load_detector_module(out / "detector.py")
    standalone = module.Detector(out)
    standalone.backbone.load_state_dict(backbone.body.state_dict())
    standalone.neck.load_state_dict(module._load_neck(out).Neck.from_pretrained().state_dict())
    standalone.head.load_state_dict(head.state_dict())
    standalone.eval()
    state = {k: v.detach().contiguous() for k, v in standalone.state_dict().items()}
    save_file(state, str(out / "detector.safetensors"))
    report.files.append(out / "detector.safetensors")
    standalone = module.Detector.from_pretrained(out)  # as a user gets it

    reference = _Reference(backbone, neck, head).eval()
    sizes = [(input_size, input_size), (input_size // 2 + 8, input_size * 3 // 4 + 24)]
    gen = torch.Generator().manual_seed(0)
    checks = [torch.rand(2, 3, h, w, generator=gen) for h, w in sizes]
    with torch.no_grad():
        wanted = [reference(x) for x in checks]
        got = [standalone(x) for x in checks]
    report.torch_diffs = _diffs(checks, got, wanted, "detector.py")
    report.decode_diff = _decode_diff(module, got[0], wanted[0], sizes[0], head.strides)

    manifest = {
        "python": "detector.py",
        "weights": "detector.safetensors",
        "input_size": int(input_size),
        "num_classes": k,
        "out_strides": list(head.strides),
        "inputs": ["images"],
        "outputs": ["cls_logits", "box_ltrb"],
    }
    if onnx:
        path = out / "detector.onnx"
        manifest["onnx_exporter"] = _export_onnx(standalone, checks[0][:1], path)
        manifest["onnx"] = path.name
        report.onnx_diffs = _onnx_diffs(path, checks, wanted)
        report.files.append(path)
    manifest["checks"] = {
        "torch_diffs": report.torch_diffs,
        "onnx_diffs": report.onnx_diffs,
        "decode_diff": report.decode_diff,
    }
    report.manifest = manifest
    log.info("exported the detector to %s", out)
    return report


class _Reference(nn.Module):
    """nas_neck's own detector: FrozenBackbone (normalises inside) + GraphNeck + head."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: DetectionHead) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.neck(self.backbone(images)))


def _diffs(inputs: list[Tensor], got: list[Any], wanted: list[Any], what: str) -> dict[str, float]:
    """Max |got - wanted| per input shape; raises past `DETECTOR_ATOL` of the outputs' scale."""
    diffs = {}
    for x, g, w in zip(inputs, got, wanted, strict=True):
        shape = "x".join(str(d) for d in x.shape)
        worst = 0.0
        for a, b in zip(g, w, strict=True):
            a = torch.as_tensor(a)
            if a.shape != b.shape:
                raise NasNeckError(f"{what} gives shape {tuple(a.shape)}, not {tuple(b.shape)}")
            diff = float((a.float() - b.float()).abs().max())
            worst = max(worst, diff)
            if not diff <= DETECTOR_ATOL * max(1.0, float(b.abs().max())):
                raise NasNeckError(
                    f"{what} differs from nas_neck's detector by {diff:.3g} at input {shape} "
                    f"(tolerance {DETECTOR_ATOL:g} of the scale); please report this exporter bug"
                )
        diffs[shape] = worst
    return diffs


def _decode_diff(
    module: Any, got: tuple[Tensor, Tensor], wanted: tuple[Tensor, Tensor], size: tuple, strides
) -> float:
    """Max difference between the exported `postprocess` and `nas_neck.detect.decode` on the
    same raw outputs (the reference's), over boxes and scores; raises when they disagree."""
    cls, box = wanted
    sizes = [(-(-size[0] // s), -(-size[1] // s)) for s in strides]
    points, point_strides = anchor_points(sizes, strides)
    # a threshold that leaves a few hundred candidates: an untrained head scores under 0.05
    top = cls.float().sigmoid().flatten().topk(min(300, cls.numel())).values
    thresh = max(0.0, float(top[-1]) - 1e-6)
    ours = decode(HeadOutput(cls, box, points, point_strides, sizes, size), score_thresh=thresh)
    theirs = module.postprocess(cls, box, size, strides, score_thresh=thresh)
    worst = 0.0
    for a, (boxes, scores, labels) in zip(ours, theirs, strict=True):
        if len(scores) != len(a["scores"]) or not torch.equal(labels, a["labels"]):
            raise NasNeckError(
                f"detector.py's postprocess keeps {len(scores)} boxes where nas_neck keeps "
                f"{len(a['scores'])}; please report this exporter bug"
            )
        if len(scores):
            worst = max(
                worst,
                float((boxes - a["boxes"]).abs().max()),
                float((scores - a["scores"]).abs().max()),
            )
    if worst > 1e-4:
        raise NasNeckError(f"detector.py's postprocess differs from nas_neck's by {worst:.3g}")
    return worst


def _export_onnx(model: nn.Module, example: Tensor, path: Path) -> str:
    """`model` as ONNX with dynamic batch and sides: torch.export first, else TorchScript."""
    model = model.eval()
    names = {"input_names": ["images"], "output_names": ["cls_logits", "box_ltrb"]}
    try:
        dim = torch.export.Dim.DYNAMIC
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=_OPSET,
                dynamic_shapes=({0: dim, 2: dim, 3: dim},),
                **names,
            )
        return "dynamo"
    except Exception as e:  # exporters fail in many ways; the fallback is checked as strictly
        log.info("torch.export-based ONNX export failed (%s); using the TorchScript one", e)
    axes = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "cls_logits": {0: "batch", 1: "points"},
        "box_ltrb": {0: "batch", 1: "points"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=_OPSET,
            dynamic_axes=axes,
            **names,
        )
    return "torchscript"


def _onnx_diffs(path: Path, inputs: list[Tensor], wanted: list[Any]) -> dict[str, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = [session.run(None, {"images": x.numpy()}) for x in inputs]
    return _diffs(inputs, [[torch.from_numpy(a) for a in g] for g in got], wanted, path.name)


def load_detector_module(path: str | Path) -> ModuleType:
    """Import a generated `detector.py` as a fresh module. It is registered in `sys.modules`
    under a name of its own (its head's dataclass needs that), as `import detector` would."""
    path = Path(path)
    name = f"_nas_neck_detector_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise NasNeckError(f"{path}: cannot import the generated module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- the generated file ---------------------------------------------------------------------
def detector_source(settings: dict[str, Any]) -> str:
    """The text of ``detector.py`` for `settings` (backbone, normalisation, head, classes)."""
    copied, imports = _copies([DetectionHead, nested_keep], fused=False)
    consts = [
        f"BACKBONE = {json.dumps(settings['backbone'])}",
        f"OUT_INDICES = {tuple(settings['out_indices'])!r}",
        f"MEAN = {tuple(settings['mean'])!r}",
        f"STD = {tuple(settings['std'])!r}",
        f"INPUT_SIZE = {settings['input_size']}  # the letterbox side it was trained at",
        f"CATEGORIES = {json.dumps(settings['categories'])}",
        f"STRIDES = {tuple(settings['strides'])!r}",
        f"HEAD = {json.dumps(settings['head'])}",
        "PAD_VALUE = 114 / 255  # letterbox padding",
        f"NESTED_OVERLAP = {NESTED_OVERLAP}  # detect_image drops nested duplicates (nested_keep)",
    ]
    header = _HEADER.replace("{IMPORTS}", "\n".join(sorted(imports)))
    body = "\n\n\n".join(c.rstrip("\n") for c in copied)
    return "\n".join([header, "\n".join(consts), "", "", body, "", "", _BODY.lstrip("\n")])


_HEADER = '''"""A colony detector exported by nas-neck: backbone + neck + head, standalone.

Needs torch, timm (the version it was exported with: the backbone's weight names are timm's)
and safetensors; not nas_neck. The neck is imported from neck.py beside this file.

    from detector import Detector, detect_image

    detector = Detector.from_pretrained()
    boxes, scores, labels = detect_image(detector, image)  # image: (H, W, 3) RGB in [0, 1]

`Detector.forward` gives the head's raw outputs, as `detector.onnx` does; `postprocess` turns
them into boxes (sigmoid, threshold, top-k, class-aware NMS), as nas-neck does.
"""

from __future__ import annotations

import importlib.util
{IMPORTS}
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
'''

_BODY = '''
def _load_neck(folder: str | Path | None = None):
    """The neck.py module beside this file (or in `folder`)."""
    path = Path(folder or Path(__file__).parent) / "neck.py"
    spec = importlib.util.spec_from_file_location(f"_neck_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Detector(nn.Module):
    """Images (B, 3, H, W), RGB in [0, 1] -> (cls_logits [B, N, K], box_ltrb [B, N, 4])."""

    input_size = INPUT_SIZE
    categories = CATEGORIES
    strides = STRIDES

    def __init__(self, folder: str | Path | None = None) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            BACKBONE, pretrained=False, features_only=True, out_indices=OUT_INDICES
        )
        self.neck = _load_neck(folder).Neck()
        self.head = DetectionHead(**HEAD)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.backbone((images - self.mean) / self.std)
        return self.head(self.neck(list(maps)))

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> Detector:
        """The detector with its weights (detector.safetensors), in eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder or Path(__file__).parent)
        detector = cls(folder)
        detector.load_state_dict(load_file(str(folder / "detector.safetensors")))
        return detector.eval()


def letterbox(image, size: int = INPUT_SIZE) -> tuple[Tensor, float, int, int]:
    """(H, W, 3) float RGB in [0, 1] (numpy or torch) scaled to fit `size` x `size`, aspect
    kept, centred on a grey pad, as in training. Returns the (3, size, size) tensor, the scale
    and the left/top padding: a point (x, y) of the image lands at (x * scale + pad_x, ...)."""
    x = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    out = torch.full((3, size, size), PAD_VALUE)
    out[:, pad_y : pad_y + nh, pad_x : pad_x + nw] = x[0]
    return out, scale, pad_x, pad_y


def postprocess(
    cls_logits: Tensor,
    box_ltrb: Tensor,
    image_size: tuple[int, int],
    strides: tuple[int, ...] = STRIDES,
    score_thresh: float = 0.05,
    nms_iou: float = 0.6,
    max_det: int = 300,
    pre_nms_topk: int = 1000,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Raw outputs of an (H, W) input -> per image (boxes [D, 4] xyxy, scores [D], labels [D]).

    Every (point, class) scoring above `score_thresh` is a candidate; the best `pre_nms_topk`
    go through class-aware NMS and the best `max_det` survive, sorted by score; boxes are
    clipped to the input.
    """
    h, w = int(image_size[0]), int(image_size[1])
    sizes = [(-(-h // s), -(-w // s)) for s in strides]
    points, _ = anchor_points(sizes, strides, cls_logits.device)
    scores_all = cls_logits.float().sigmoid()
    boxes_all = ltrb_to_xyxy(points, box_ltrb.float())
    k = scores_all.shape[-1]
    results = []
    for scores, boxes in zip(scores_all, boxes_all):
        flat = scores.flatten()
        cand = (flat > score_thresh).nonzero().squeeze(1)
        if cand.numel() > pre_nms_topk:
            cand = cand[flat[cand].topk(pre_nms_topk).indices]
        cand_scores, labels = flat[cand], cand % k
        cand_boxes = boxes[cand // k].clone()
        cand_boxes[:, 0::2] = cand_boxes[:, 0::2].clamp(0, w)
        cand_boxes[:, 1::2] = cand_boxes[:, 1::2].clamp(0, h)
        keep = _batched_nms(cand_boxes, cand_scores, labels, nms_iou)[:max_det]
        results.append((cand_boxes[keep], cand_scores[keep], labels[keep]))
    return results


def _batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Indices kept by class-aware NMS, best first (torchvision's when it is installed)."""
    try:
        from torchvision.ops import batched_nms
    except ImportError:
        batched_nms = None
    if batched_nms is not None:
        return batched_nms(boxes, scores, labels, iou)
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shifted = boxes + (labels.to(boxes) * (boxes.max() + 1))[:, None]  # classes never overlap
    order = scores.argsort(descending=True)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    keep = []
    while order.numel():
        i = order[0]
        keep.append(i)
        rest = order[1:]
        lt = torch.maximum(shifted[i, :2], shifted[rest, :2])
        rb = torch.minimum(shifted[i, 2:], shifted[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return torch.stack(keep)


@torch.no_grad()
def detect_image(
    detector: nn.Module,
    image,
    score_thresh: float = 0.35,
    size: int = INPUT_SIZE,
    nested_overlap: float = NESTED_OVERLAP,
) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes (xyxy, image pixels), scores and labels (index into CATEGORIES) of one (H, W, 3)
    RGB image in [0, 1], letterboxed to `size` as in training, without nested duplicates (a
    colony found again as a part of itself: `nested_keep`; 0 keeps them), as nas-neck predict."""
    x, scale, pad_x, pad_y = letterbox(image, size)
    cls_logits, box_ltrb = detector(x[None])
    found = postprocess(cls_logits, box_ltrb, (size, size), score_thresh=score_thresh)
    boxes, scores, labels = found[0]
    h, w = image.shape[:2]
    boxes = (boxes - torch.tensor([pad_x, pad_y, pad_x, pad_y])) / scale
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h]))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not all in the padding
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = nested_keep(boxes, scores, labels, nested_overlap, agnostic=False)
    return boxes[keep], scores[keep], labels[keep]
'''
