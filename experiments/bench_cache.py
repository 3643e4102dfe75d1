"""Cache speedup: a training trial with and without the feature cache at 512 px (issue 9, study 1).

Trains the same detector (PAFPN neck + the fixed head, same seed, same batches, same loss and
optimizer: `nas_neck.detect.trainer.train`) for one epoch over `--size` synthetic plates twice:
fed from the feature cache, and fed live, decoding and letterboxing each image and running the
frozen backbone every step, as a trainer without the cache would. Also times the one-time cache
build and says after how many trials it has paid for itself. Target: >= 3x.

    python experiments/bench_cache.py [--size 160] [--image-size 512] [--arch pafpn] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from _common import OUT, ROOT, write_result

from nas_neck.backbone import FrozenBackbone
from nas_neck.config import TrainConfig
from nas_neck.data.cache import FeatureCache
from nas_neck.data.coco import CocoDetection
from nas_neck.data.synth import generate_synthetic
from nas_neck.detect.trainer import Detector, train
from nas_neck.dsl import load_architecture


class _LiveFeatures:
    """The cache's interface computed on the fly: decode, letterbox, backbone, every step."""

    def __init__(
        self, dataset: CocoDetection, backbone: FrozenBackbone, cache: FeatureCache
    ) -> None:
        self.dataset, self.backbone, self.cache = dataset, backbone, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def features(self, indices: Sequence[int]) -> list[torch.Tensor]:
        return self.backbone(torch.stack([self.dataset[i][0] for i in indices]))

    def targets(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        return self.cache.targets(indices)  # identical boxes; only the features' source differs


class _Head:
    """The first `n` samples of a feature source: a one-step warm-up run, left out of the timing."""

    def __init__(self, source: FeatureCache | _LiveFeatures, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def features(self, indices: Sequence[int]) -> list[torch.Tensor]:
        return self.source.features(indices)

    def targets(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        return self.source.targets(indices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=160, help="training plates (one epoch)")
    p.add_argument("--image-size", type=int, default=512, help="image side in pixels")
    p.add_argument("--arch", default="pafpn", help="a fixed graph under search_spaces/")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=OUT / "bench_cache.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=1)
    arch = load_architecture(ROOT / "search_spaces" / f"{args.arch}.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = generate_synthetic(
            Path(tmp) / "synth", n_train=args.size, n_val=0, size=args.image_size
        )
        gen_s = time.perf_counter() - start
        dataset = CocoDetection(data.train_ann, data.image_dir, args.image_size)
        backbone = FrozenBackbone()
        start = time.perf_counter()
        cache = FeatureCache.build(dataset, backbone, root=Path(tmp) / "cache", progress=False)
        build_s = time.perf_counter() - start
        seconds = {}
        for mode, source in (("cache", cache), ("live", _LiveFeatures(dataset, backbone, cache))):
            warm = Detector(arch, backbone.channels, dataset.num_classes, cfg)
            train(warm, _Head(source, cfg.batch_size), cfg, torch.device("cpu"))
            torch.manual_seed(cfg.seed)
            model = Detector(arch, backbone.channels, dataset.num_classes, cfg)
            result = train(model, source, cfg, torch.device("cpu"))
            seconds[mode] = result.seconds
            print(
                f"{mode:>5}: {result.steps} steps in {result.seconds:.1f} s "
                f"({1000 * result.seconds / result.steps:.0f} ms/step), final loss {result.losses[-1]:.4f}"
            )

    speedup = seconds["live"] / seconds["cache"]
    saved = seconds["live"] - seconds["cache"]
    pays_off = build_s / saved if saved > 0 else float("inf")
    print(
        f"cache build (once per dataset, size and backbone): {build_s:.1f} s; "
        f"generator {args.size / gen_s:.1f} plates/s at {args.image_size} px"
    )
    print(
        f"speedup {speedup:.1f}x per trial (target >= 3x); the cache pays for itself after "
        f"{pays_off:.2f} trials"
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(
        ["live backbone", "feature cache", "cache build (once)"],
        [seconds["live"], seconds["cache"], build_s],
        color=["#ff7f0e", "#1f77b4", "#9a9a9a"],
    )
    ax.set(
        xlabel="seconds",
        title=f"one training epoch, {args.size} plates at {args.image_size} px, "
        f"{args.arch}: {speedup:.1f}x",
    )
    result = {
        "study": "cache speedup",
        "command": f"python experiments/bench_cache.py --size {args.size} --image-size {args.image_size} "
                   f"--arch {args.arch} --threads {args.threads}",
        "arch": args.arch, "plates": args.size, "image_size": args.image_size, "threads": args.threads,
        "train_s": seconds, "cache_build_s": build_s, "speedup": speedup, "target": 3.0,
        "cache_pays_off_after_trials": pays_off, "generator_plates_per_s": args.size / gen_s,
    }  # fmt: skip
    write_result(args.out, result, fig)


if __name__ == "__main__":
    main()
