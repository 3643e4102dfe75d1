"""Use an exported neck: timm backbone (features_only) -> exported `Neck` -> nas-neck's head.

    python examples/export_usage.py runs/export [--random-backbone] [--size 384]

The folder is what `nas-neck export` wrote. `neck.py` needs only torch; the detection head is
`nas_neck.detect.head.DetectionHead`, with the trained weights from `head.safetensors` when the
export has them. `--random-backbone` skips the pretrained backbone weights (no download; only
the shapes are then meaningful).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

from nas_neck.detect.decode import decode
from nas_neck.detect.head import DetectionHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an export folder (nas-neck export --out)")
    parser.add_argument("--random-backbone", action="store_true", help="no pretrained weights")
    parser.add_argument("--size", type=int, default=None, help="square input size")
    args = parser.parse_args()
    manifest = json.loads((args.folder / "export.json").read_text())
    search = manifest.get("search", {})

    spec = importlib.util.spec_from_file_location("neck", args.folder / "neck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    neck = module.Neck.from_pretrained()

    # timm CNNs number their feature maps by stride: map i has stride 2 ** (i + 1).
    indices = tuple(lvl - 1 for lvl in manifest["in_levels"])
    backbone = timm.create_model(
        search.get("backbone", "tf_efficientnet_lite0"),
        features_only=True,
        pretrained=not args.random_backbone,
        out_indices=indices,
    ).eval()
    if (args.folder / "backbone.safetensors").exists():
        backbone.load_state_dict(load_file(args.folder / "backbone.safetensors"))
    info = backbone.feature_info
    if (info.channels(), info.reduction()) != (list(neck.in_channels), list(neck.in_strides)):
        raise SystemExit(
            f"the backbone gives {info.channels()} channels at strides {info.reduction()}, "
            f"the neck reads {list(neck.in_channels)} at {list(neck.in_strides)}"
        )

    head_cfg = manifest.get("head", {"num_classes": 1, "width": 64, "num_convs": 2})
    head = DetectionHead(
        neck.out_channels,
        neck.out_strides,
        head_cfg["num_classes"],
        width=head_cfg["width"],
        num_convs=head_cfg["num_convs"],
    )
    if "file" in head_cfg:
        head.load_state_dict(load_file(args.folder / head_cfg["file"]))
    head.eval()

    size = args.size or search.get("input_size", 384)
    images = torch.rand(1, 3, size, size)  # RGB in [0, 1], letterboxed to the search's size
    cfg = backbone.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        maps = neck(backbone((images - mean) / std))
        out = head.predict(maps, (size, size))
    detections = decode(out, score_thresh=0.05, max_det=100)[0]
    for lvl, m in zip(neck.out_levels, maps, strict=True):
        print(f"P{lvl}: {tuple(m.shape)}")
    print(
        f"head: cls {tuple(out.cls_logits.shape)}, boxes {tuple(out.box_ltrb.shape)}; "
        f"{len(detections['boxes'])} detections above 0.05"
    )


if __name__ == "__main__":
    main()
