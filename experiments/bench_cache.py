"""Benchmark the data layer: synthetic-plate throughput and the feature cache's training speedup.

(a) images per second of `generate_synthetic` (default pool, JPEG writing included);
(b) seconds per training step of a small neck+head-like module fed from the feature cache versus
    fed by running the frozen backbone every step (images decoded and letterboxed every step, as
    a data loader would, and, separately, already decoded in memory), plus the one-time cache
    build and the number of steps after which it has paid for itself.

    python experiments/bench_cache.py [--n 100] [--size 512] [--steps 20] [--batch 8] [--out FILE]

Prints the figures and writes them as JSON (default experiments/out/bench_cache.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from nas_neck.backbone import FrozenBackbone
from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.data.synth import generate_synthetic


class TinyNeckHead(nn.Module):
    """Neck+head stand-in: 1x1 lateral convs, a top-down sum, two 3x3 convs and a prediction conv."""

    def __init__(self, channels: list[int], width: int = 64, outputs: int = 8) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.tower = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, outputs, 1),
        )  # fmt: skip

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(maps) - 2, -1, -1):
            maps[i] = maps[i] + nn.functional.interpolate(
                maps[i + 1], size=maps[i].shape[-2:], mode="nearest"
            )
        return [self.tower(m) for m in maps]


def _time_steps(model: nn.Module, get_features, batches: list[list[int]], warmup: int = 2) -> float:
    """Mean seconds per optimizer step over `batches` after `warmup` untimed steps."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    start = 0.0
    for step, idx in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        loss = sum(o.square().mean() for o in model(get_features(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=100, help="synthetic images to draw (and to cache)"
    )
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per mode")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/bench_cache.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_synthetic(
            Path(tmp) / "synth", n_train=args.n, n_val=0, size=args.size, seed=0
        )
        gen_s = time.perf_counter() - start
        print(
            f"(a) generator: {args.n} plates at {args.size} px in {gen_s:.1f} s = {args.n / gen_s:.1f} images/s"
        )

        dataset = CocoDetection(paths.train_ann, size=args.size)
        backbone = FrozenBackbone()
        start = time.perf_counter()
        cache = FeatureCache.build(
            dataset, backbone, root=Path(tmp) / "cache", views=(0,), progress=False
        )
        build_s = time.perf_counter() - start

        rng = random.Random(0)
        batches = [rng.sample(range(len(dataset)), args.batch) for _ in range(args.steps + 2)]
        decoded = {i: dataset[i][0] for i in sorted({i for b in batches for i in b})}
        results = {}
        for mode, get_features in (
            ("cache", cache.features),
            ("backbone_decoded", lambda idx: backbone(torch.stack([decoded[i] for i in idx]))),
            ("backbone_from_disk", lambda idx: backbone(torch.stack([dataset[i][0] for i in idx]))),
        ):
            torch.manual_seed(0)
            model = TinyNeckHead(backbone.channels)
            results[mode] = _time_steps(model, get_features, batches)

    speedup = results["backbone_from_disk"] / results["cache"]
    saved = results["backbone_from_disk"] - results["cache"]
    report = {
        "size": args.size,
        "n_images": args.n,
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "generator_s": gen_s,
        "generator_images_per_s": args.n / gen_s,
        "cache_build_s": build_s,
        "step_s": results,
        "speedup_vs_backbone_from_disk": speedup,
        "speedup_vs_backbone_decoded": results["backbone_decoded"] / results["cache"],
        "cache_pays_off_after_steps": build_s / saved if saved > 0 else None,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "platform": platform.platform(),
        },
        "torch": torch.__version__,
    }
    print(f"    cache build (once): {build_s:.1f} s for {args.n} images")
    print(f"(b) training step, batch {args.batch} at {args.size} px ({args.threads} threads):")
    for mode, seconds in results.items():
        print(f"    {mode:20s} {seconds * 1000:8.1f} ms/step")
    print(f"    speedup from the cache: {speedup:.1f}x vs backbone+decode, "
          f"{report['speedup_vs_backbone_decoded']:.1f}x vs backbone on decoded images")  # fmt: skip
    if report["cache_pays_off_after_steps"]:
        print(
            f"    the cache pays for itself after {report['cache_pays_off_after_steps']:.0f} training steps"
        )
    print(f"    load average during the run: {os.getloadavg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
