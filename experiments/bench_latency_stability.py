"""How stable is a latency measurement across processes? (target: CV of medians <= 5%)

The search compares candidates by latency measured in different worker processes, so what
matters is the spread between processes, not only within one. This measures the same neck-like
module (a plain-conv FPN, 3 levels of a 384 px input, width 64, the same weights everywhere) in
N fresh spawned processes, one after another, and reports each process's median and the
coefficient of variation (CV) of the medians; also the CV of the p10s, which other processes on
a shared machine disturb less (timeit's reasoning for its minimum), and the 1-minute load
average each process started under, so a noisy host shows up in the result.

    python experiments/bench_latency_stability.py [--size 5] [--threads 1] [--input-size 384]

Issue 9, study 2. `--size` is the number of processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _common import OUT, write_result
from torch import Tensor, nn

from nas_neck.device import available_cpus
from nas_neck.measure import count_flops, count_params, feature_inputs, measure_latency

BACKBONE_CHANNELS = (40, 112, 320)  # EfficientNet-Lite0 at strides 8, 16, 32
STRIDES = (8, 16, 32)


class PlainFPN(nn.Module):
    """FPN from plain convs: 1x1 laterals, nearest top-down sum, 3x3 output convs."""

    def __init__(self, in_channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in in_channels)
        self.out_channels = [width] * len(in_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.output, laterals, strict=True)]


def _measure_once(args: dict[str, Any]) -> dict[str, Any]:
    """One process's measurement (runs in a fresh spawned interpreter)."""
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    neck = PlainFPN(BACKBONE_CHANNELS, args["width"])
    inputs = feature_inputs(BACKBONE_CHANNELS, STRIDES, args["size"])
    latency = measure_latency(
        neck,
        inputs,
        threads=args["threads"],
        warmup=args["warmup"],
        runs=args["runs"],
        device=args["device"],
    )
    return latency.as_dict() | {"loadavg_1min": load}


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5, help="processes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the search's default)"
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=384)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT / "latency_stability.json")
    args = parser.parse_args()

    config = {
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "size": args.input_size,
        "width": args.width,
        "device": args.device,
    }
    neck = PlainFPN(BACKBONE_CHANNELS, args.width)
    inputs = feature_inputs(BACKBONE_CHANNELS, STRIDES, args.input_size)
    flops, params = count_flops(neck, inputs), count_params(neck)

    # one process per measurement, sequentially, so they do not compete for the cores
    spawn = multiprocessing.get_context("spawn")
    results = []
    for i in range(args.size):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result = pool.submit(_measure_once, config).result()
        results.append(result)
        print(
            f"process {i}: median {result['median_ms']:.3f} ms "
            f"(p10 {result['p10_ms']:.3f}, p90 {result['p90_ms']:.3f}, "
            f"threads {result['threads']}, {result['device']}, "
            f"load {result['loadavg_1min']:.2f})"
        )
    medians = [r["median_ms"] for r in results]
    cv, cv_p10 = _cv(medians), _cv([r["p10_ms"] for r in results])
    print(
        f"median of medians {statistics.median(medians):.3f} ms, CV across processes "
        f"{100 * cv:.2f}% (target <= 5%), CV of p10 {100 * cv_p10:.2f}%; "
        f"FLOPs (2 per MAC) {flops / 1e9:.3f} G, params {params / 1e6:.3f} M"
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(
        range(len(results)),
        medians,
        yerr=[
            [m - r["p10_ms"] for m, r in zip(medians, results, strict=True)],
            [r["p90_ms"] - m for m, r in zip(medians, results, strict=True)],
        ],
        fmt="o",
        capsize=4,
    )
    ax.set(
        xlabel="process",
        ylabel="latency, ms (median, p10-p90)",
        title=f"PlainFPN at {args.input_size} px, {config['threads']} thread(s): CV {100 * cv:.1f} %",
    )
    ax.grid(alpha=0.3)
    summary = {
        "study": "latency stability",
        "command": f"python experiments/bench_latency_stability.py --size {args.size} "
        f"--threads {args.threads} --input-size {args.input_size}",
        "config": config,
        "module": "PlainFPN",
        "backbone_channels": BACKBONE_CHANNELS,
        "strides": STRIDES,
        "flops_2_per_mac": flops,
        "params": params,
        "processes": results,
        "medians_ms": medians,
        "cv": cv,
        "cv_p10": cv_p10,
        "target_cv": 0.05,
        "cpus_available": available_cpus(),
    }
    write_result(args.out, summary, fig)


if __name__ == "__main__":
    main()
