"""Export a trained neck as a folder a user can ship: standalone source, weights, genotype, docs.

Every export checks itself before returning: the generated `neck.py` is imported and compared
with the `GraphNeck` it came from, the fused module with the unfused one, and the ONNX and
TorchScript files with PyTorch at a second input size (dynamic shapes). A mismatch raises
instead of leaving a wrong file behind unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from nas_neck.detect.head import DetectionHead
from nas_neck.errors import NasNeckError
from nas_neck.export.detector import DetectorReport, export_detector
from nas_neck.export.fuse import fuse_neck
from nas_neck.export.onnx import (
    OPSET,
    export_onnx,
    export_torchscript,
    onnx_max_diffs,
    torchscript_max_diffs,
)
from nas_neck.export.source import SearchInfo, neck_source
from nas_neck.neck import GraphNeck

__all__ = ["ExportReport", "export_neck", "load_standalone"]

log = logging.getLogger(__name__)

STANDALONE_ATOL = 1e-5  # the generated module runs the very same ops
FUSED_ATOL = 1e-4  # folding BatchNorm reorders float arithmetic
RUNTIME_ATOL = 1e-4  # onnxruntime / TorchScript kernels differ from eager PyTorch's


@dataclass
class ExportReport:
    """What an export wrote and how closely each artefact matches the trained `GraphNeck`."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    standalone_diff: float = 0.0  # max |neck.py - GraphNeck| (fused or not, as exported)
    fused_diff: float | None = None  # max |fused - unfused| when fused
    onnx_exporter: str | None = None  # "dynamo" or "torchscript"
    onnx_diffs: dict[str, float] = field(default_factory=dict)  # input shape -> max |ORT - torch|
    torchscript_diffs: dict[str, float] = field(default_factory=dict)
    detector: DetectorReport | None = None  # with `detector_backbone`: the whole detector


def export_neck(
    neck: GraphNeck,
    out_dir: str | Path,
    *,
    info: SearchInfo | None = None,
    head: DetectionHead | None = None,
    categories: list[str] | None = None,
    backbone_state: dict[str, Tensor] | None = None,
    fuse: bool = False,
    onnx: bool = False,
    torchscript: bool = False,
    check_size: int = 256,
    detector_backbone: nn.Module | None = None,
) -> ExportReport:
    """Write `neck.py`, its weights (`neck.safetensors`, `neck.pt`), `architecture.yaml`,
    `README.md` and `export.json` to `out_dir`; optionally the trained head's weights
    (`head.safetensors`), tuned backbone weights (`backbone.safetensors`), `neck.onnx` and
    `neck.torchscript.pt`.

    `neck` is put in eval mode; `fuse` exports a fused copy (BatchNorm folded, RepConv
    re-parameterized). Checks run on random backbone maps of a `check_size`-pixel square image
    and of a smaller, non-square one.

    `detector_backbone` (a `FrozenBackbone`, with `head`) also writes the whole detector:
    `detector.py`, `detector.safetensors` and `detector.onnx` (`nas_neck.export.detector`).
    """
    if detector_backbone is not None and head is None:
        raise NasNeckError("a detector export needs the head trained with the neck")
    info = info or SearchInfo()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out)
    neck = neck.eval()
    model = fuse_neck(neck) if fuse else neck
    sizes = [(check_size, check_size), (check_size // 2 + 8, check_size * 3 // 4 + 24)]
    checks = [_features(neck, size, batch=2, seed=i) for i, size in enumerate(sizes)]
    if fuse:
        report.fused_diff = _compare(model, neck, checks, FUSED_ATOL, "the fused neck")

    source = neck_source(model, info)
    report.files.append(_write(out / "neck.py", source.code))
    state = source.state_dict(model)
    save_file(state, str(out / "neck.safetensors"))
    torch.save(state, out / "neck.pt")
    report.files += [out / "neck.safetensors", out / "neck.pt"]
    standalone = load_standalone(out / "neck.py").Neck.from_pretrained(out / "neck.safetensors")
    report.standalone_diff = _compare(
        standalone, model, checks, STANDALONE_ATOL, "the generated neck.py"
    )

    report.files.append(neck.arch.save(out / "architecture.yaml"))
    manifest = _manifest(neck, info, fuse, categories)
    if head is not None:
        save_file(
            {k: v.contiguous() for k, v in head.state_dict().items()}, str(out / "head.safetensors")
        )
        report.files.append(out / "head.safetensors")
        manifest["head"] = _head_config(head)
    if backbone_state is not None:
        save_file(
            {k: v.contiguous() for k, v in backbone_state.items()},
            str(out / "backbone.safetensors"),
        )
        report.files.append(out / "backbone.safetensors")
        manifest["backbone_weights"] = "backbone.safetensors"

    levels = [f"p{lvl}" for lvl in neck.arch.inputs]
    outputs = [f"out_p{lvl}" for lvl in neck.out_levels]
    if onnx:
        path = out / "neck.onnx"
        example = _features(neck, sizes[0], batch=1, seed=9)
        report.onnx_exporter = export_onnx(standalone, example, path, levels, outputs)
        diffs = onnx_max_diffs(path, standalone, checks)
        report.onnx_diffs = {_shape(x): d for x, d in zip(checks, diffs, strict=True)}
        _check(report.onnx_diffs, "neck.onnx in onnxruntime")
        report.files.append(path)
        manifest["onnx"] = {
            "file": path.name,
            "exporter": report.onnx_exporter,
            "opset": OPSET,
            "inputs": levels,
            "outputs": outputs,
        }
    if torchscript:
        path = out / "neck.torchscript.pt"
        export_torchscript(standalone, _features(neck, sizes[0], batch=1, seed=9), path)
        diffs = torchscript_max_diffs(path, standalone, checks)
        report.torchscript_diffs = {_shape(x): d for x, d in zip(checks, diffs, strict=True)}
        _check(report.torchscript_diffs, "neck.torchscript.pt")
        report.files.append(path)
        manifest["torchscript"] = {"file": path.name, "inputs": levels}

    if detector_backbone is not None:
        report.detector = export_detector(
            detector_backbone, neck, head, out, input_size=check_size, categories=categories
        )
        report.files += report.detector.files
        manifest["detector"] = report.detector.manifest

    checked = asdict(report)
    manifest["checks"] = {k: v for k, v in checked.items() if k.endswith(("diff", "diffs"))}
    report.files.append(_write(out / "export.json", json.dumps(manifest, indent=2) + "\n"))
    report.files.append(_write(out / "README.md", _readme(neck, info, manifest)))
    log.info("exported %s [%s] to %s", neck.arch.name, neck.arch.hash, out)
    return report


def load_standalone(path: str | Path) -> ModuleType:
    """Import a generated `neck.py` as a fresh module (not registered in `sys.modules`)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_nas_neck_standalone_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise NasNeckError(f"{path}: cannot import the generated module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- checks -------------------------------------------------------------------------------------
def _features(neck: GraphNeck, size: tuple[int, int], batch: int, seed: int) -> list[Tensor]:
    """Random backbone maps for an image of `size` (H, W): sides `ceil(S / stride)`."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return [
        torch.randn(batch, ch, math.ceil(h / 2**lvl), math.ceil(w / 2**lvl), generator=gen)
        for ch, lvl in zip(neck.in_channels, neck.arch.inputs, strict=True)
    ]


@torch.no_grad()
def _compare(
    got: nn.Module, want: nn.Module, inputs: list[list[Tensor]], atol: float, what: str
) -> float:
    """Max abs difference of two necks' outputs; raises past `atol` (relative to the scale)."""
    worst = 0.0
    for x in inputs:
        for a, b in zip(got.eval()(x), want.eval()(x), strict=True):
            diff = float((a - b).abs().max())
            worst = max(worst, diff)
            if diff > atol * max(1.0, float(b.abs().max())):
                raise NasNeckError(
                    f"{what} differs from the trained neck by {diff:.3g} at {_shape(x)} "
                    f"(tolerance {atol:g}); please report this exporter bug"
                )
    return worst


def _check(diffs: dict[str, float], what: str) -> None:
    for shape, diff in diffs.items():
        if not diff <= RUNTIME_ATOL:
            raise NasNeckError(f"{what} differs from PyTorch by {diff:.3g} at input {shape}")


def _shape(x: list[Tensor]) -> str:
    return " ".join("x".join(str(d) for d in t.shape) for t in x)


# ---- files --------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _head_config(head: DetectionHead) -> dict[str, Any]:
    return {
        "file": "head.safetensors",
        "in_channels": [p[0].in_channels for p in head.proj],
        "strides": head.strides,
        "num_classes": head.num_classes,
        "width": head.cls_pred.in_channels,
        "num_convs": len(head.cls_tower),
    }


def _manifest(
    neck: GraphNeck, info: SearchInfo, fused: bool, categories: list[str] | None
) -> dict[str, Any]:
    arch = neck.arch
    return {
        "name": arch.name,
        "hash": arch.hash,
        "fused": fused,
        "in_levels": list(arch.inputs),
        "in_channels": list(neck.in_channels),
        "in_strides": [2**lvl for lvl in arch.inputs],
        "out_levels": list(neck.out_levels),
        "out_channels": list(neck.out_channels),
        "out_strides": list(neck.out_strides),
        "search": {k: v for k, v in asdict(info).items() if v is not None},
        "categories": categories,
    }


def _readme(neck: GraphNeck, info: SearchInfo, manifest: dict[str, Any]) -> str:
    arch = neck.arch
    backbone = info.backbone or "tf_efficientnet_lite0"
    indices = tuple(lvl - 1 for lvl in arch.inputs)  # timm CNNs: feature i has stride 2**(i+1)
    size = info.input_size or 384
    lines = [
        f"# {arch.name} neck [{arch.hash}]",
        "",
        f"Exported by nas-neck: {arch.short()}.",
        *info.lines(),
        "",
        "| file | what |",
        "|---|---|",
        "| `neck.py` | the neck as one PyTorch module, `Neck`; needs only `torch` |",
        "| `neck.safetensors`, `neck.pt` | its trained weights (`Neck.from_pretrained()` reads them) |",
        "| `architecture.yaml` | the genotype (`nas_neck.dsl.load_architecture`) |",
        "| `export.json` | shapes, search metrics, head configuration, parity checks |",
    ]
    if "head" in manifest:
        lines.append(
            "| `head.safetensors` | the detection head trained with it (`nas_neck.detect.head.DetectionHead`) |"
        )
    if "backbone_weights" in manifest:
        lines.append(
            "| `backbone.safetensors` | the fine-tuned backbone (timm `features_only` names) |"
        )
    if "onnx" in manifest:
        lines.append(
            f"| `neck.onnx` | ONNX opset 17, inputs {', '.join(manifest['onnx']['inputs'])}; dynamic batch and sides |"
        )
    if "torchscript" in manifest:
        lines.append(
            "| `neck.torchscript.pt` | traced TorchScript, one tensor per level in, a tuple out |"
        )
    if "detector" in manifest:
        lines += [
            "| `detector.py`, `detector.safetensors` | backbone + neck + head as one module "
            "(`Detector`), with `letterbox`, `postprocess` (decoding, NMS), `nested_keep` and "
            "`detect_image`; "
            "needs torch, timm and safetensors, not nas_neck |",
            "| `detector.onnx` | the same detector in ONNX: images (B, 3, H, W) in [0, 1] in, "
            "`cls_logits`, `box_ltrb` out; decode with `detector.postprocess` |",
        ]
    lines += [
        "",
        "## Use",
        "",
        f"The neck reads levels {', '.join(f'P{x}' for x in arch.inputs)} (strides "
        f"{', '.join(str(2**x) for x in arch.inputs)}) with {', '.join(map(str, neck.in_channels))} "
        f"channels, the maps of `{backbone}` on images scaled to [0, 1] and normalized with the "
        f"backbone's mean and std (the search letterboxed images to {size}x{size}).",
        "",
        "```python",
        "import timm",
        "import torch",
        "from neck import Neck",
        "",
        "# pretrained: the ImageNet weights the search's frozen backbone had; out_indices: the maps",
        f"# at strides {', '.join(str(2**x) for x in arch.inputs)}",
        f'backbone = timm.create_model("{backbone}", features_only=True, pretrained=True, '
        f"out_indices={indices}).eval()",
    ]
    if "backbone_weights" in manifest:
        lines += [
            "from safetensors.torch import load_file",
            "",
            'backbone.load_state_dict(load_file("backbone.safetensors"))  # fine-tuned with the neck',
        ]
    lines += [
        "neck = Neck.from_pretrained()",
        "cfg = backbone.pretrained_cfg",
        'mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)',
        f"images = torch.rand(1, 3, {size}, {size})  # RGB in [0, 1]",
        "with torch.no_grad():",
        "    maps = neck(backbone((images - mean) / std))",
        f"# maps: {', '.join(f'P{x}' for x in neck.out_levels)} with {', '.join(map(str, neck.out_channels))} channels",
        "```",
    ]
    if "head" in manifest:
        h = manifest["head"]
        lines += [
            "",
            "With the detection head it was trained with (needs `nas_neck`):",
            "",
            "```python",
            "from safetensors.torch import load_file",
            "from nas_neck.detect.head import DetectionHead",
            "",
            f"head = DetectionHead(Neck.out_channels, Neck.out_strides, num_classes={h['num_classes']}, "
            f"width={h['width']}, num_convs={h['num_convs']})",
            'head.load_state_dict(load_file("head.safetensors"))',
            "cls_logits, box_ltrb = head.eval()(maps)  # [B, N, K] logits, [B, N, 4] pixel distances",
            "```",
        ]
        if manifest.get("categories"):
            lines += ["", f"Classes, in order: {', '.join(manifest['categories'])}."]
    if "onnx" in manifest:
        lines += [
            "",
            "ONNX Runtime:",
            "",
            "```python",
            "import onnxruntime as ort",
            "",
            'session = ort.InferenceSession("neck.onnx")',
            "outputs = session.run(None, {name: m.numpy() for name, m in zip("
            f"{manifest['onnx']['inputs']}, backbone_maps)}})",
            "```",
        ]
    if "detector" in manifest:
        lines += [
            "",
            "The whole detector on a photo (`nas-neck predict --export THIS_FOLDER` does it with "
            "tiling and counts):",
            "",
            "```python",
            "import numpy as np",
            "from PIL import Image",
            "from detector import Detector, detect_image",
            "",
            "detector = Detector.from_pretrained()",
            'image = np.asarray(Image.open("plate.jpg").convert("RGB"), np.float32) / 255',
            "boxes, scores, labels = detect_image(detector, image)  # xyxy in image pixels",
            "```",
            "",
            "ONNX Runtime (decoding outside the graph, as `detector.postprocess`):",
            "",
            "```python",
            "import onnxruntime as ort",
            "import torch",
            "from detector import letterbox, postprocess",
            "",
            'session = ort.InferenceSession("detector.onnx")',
            "x, scale, pad_x, pad_y = letterbox(image)",
            'cls_logits, box_ltrb = session.run(None, {"images": x[None].numpy()})',
            "boxes, scores, labels = postprocess(torch.from_numpy(cls_logits), "
            "torch.from_numpy(box_ltrb), x.shape[-2:])[0]",
            "```",
        ]
    lines += [
        "",
        "`examples/export_usage.py` in nas-neck runs this end to end on an export folder.",
        "",
    ]
    return "\n".join(lines)
