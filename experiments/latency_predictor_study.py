"""Latency predictor accuracy (issue 16, study 1): predicted vs measured latency of random necks.

For each input size in `--sizes`, draws `--size` random architectures cycling through the three
searchable families (seeds 2000 + k, none of the necks the overhead is fitted on), predicts each
with `nas_neck.screen.LatencyTable` (built on first use, in the machine's cache folder), then
measures each twice with `ProxyTask.cost` (two passes over all of them, minutes apart). Reports
the share predicted within +-10 % of the first measurement and the median error, and the same for
the second measurement against the first: the measurement's own repeatability, a floor no
predictor of it can beat. Load averages are recorded before and after each size.

The proxy task reads a tiny synthetic dataset per size (latency depends on the backbone's
channels, not on the data), so no full feature cache is built for 512 px.

    python experiments/latency_predictor_study.py [--size 50] [--sizes 256,512] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _common import OUT, write_result

from nas_neck.config import ProxyConfig
from nas_neck.data.cache import default_cache_root
from nas_neck.data.synth import generate_synthetic
from nas_neck.dsl import Architecture, load_space
from nas_neck.proxy import ProxyTask
from nas_neck.screen import LatencyTable
from nas_neck.screen.latency_table import _default_fit

FAMILIES = ["pafpn-family", "bifpn-family", "nasfpn-free"]


def architectures(n: int) -> list[tuple[str, Architecture]]:
    """(family, architecture), cycling through the families, no duplicates, none of the fit's."""
    seen = {a.hash for a in _default_fit()}
    archs, k = [], 0
    while len(archs) < n:
        family = FAMILIES[k % len(FAMILIES)]
        arch = load_space(family).random(2000 + k)
        if arch.hash not in seen:
            archs.append((family, arch))
            seen.add(arch.hash)
        k += 1
    return archs


def _errors(predicted: list[float], measured: list[float]) -> dict[str, float]:
    err = np.array(predicted) / np.array(measured) - 1
    return {
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "median_abs_error_pct": float(100 * np.median(np.abs(err))),
        "mean_error_pct": float(100 * np.mean(err)),
        "p90_abs_error_pct": float(100 * np.percentile(np.abs(err), 90)),
    }


def study(size: int, n: int, threads: int) -> dict:
    root = default_cache_root()
    data = generate_synthetic(root / "latency-study" / f"data-{size}", 8, 4, size=size, seed=0)
    config = ProxyConfig(data=data.root, input_size=size, views=(0,), latency_threads=threads)
    proxy = ProxyTask(config)
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    table = LatencyTable(proxy)
    archs = architectures(n)
    predicted = table.predict_many([a for _, a in archs])
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(20):
        table.predict_many([a for _, a in archs])
    predict_us = (time.perf_counter() - start) / (20 * n) * 1e6
    passes = []
    for p in range(2):
        measured = []
        for i, (family, arch) in enumerate(archs):
            measured.append(proxy.cost(arch)["latency_ms"])
            if p == 0:
                err = 100 * (predicted[i] / measured[-1] - 1)
                print(
                    f"{size:>4} {family:>13} {arch.hash}  predicted {predicted[i]:7.3f}  "
                    f"measured {measured[-1]:7.3f} ms  {err:+6.1f} %",
                    flush=True,
                )
        passes.append(measured)
    rows = [
        {
            "family": f,
            "hash": a.hash,
            "summary": a.short(),
            "predicted_ms": pr,
            "measured_ms": m1,
            "measured_again_ms": m2,
        }
        for (f, a), pr, m1, m2 in zip(archs, predicted, *passes, strict=True)
    ]
    families = {
        f: _errors([r["predicted_ms"] for r in rs], [r["measured_ms"] for r in rs])
        for f in FAMILIES
        if (rs := [r for r in rows if r["family"] == f])
    }
    return {
        "input_size": size,
        "n": n,
        "predictor": _errors(predicted, passes[0]),
        "predictor_vs_mean_of_two": _errors(predicted, list(np.mean(passes, axis=0))),
        "measurement_repeatability": _errors(passes[1], passes[0]),
        "by_family": families,
        "table": str(table.path),
        "table_steps": len(table._steps),
        "overhead": table.overhead,
        "table_build_s": build_s,
        "predict_us": predict_us,
        "measured_median_ms": statistics.median(passes[0]),
        "load_avg_before": load_before,
        "load_avg_after": list(os.getloadavg()),
        "architectures": rows,
    }


def _plot(results: list[dict]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        rows = r["architectures"]
        for i, f in enumerate(FAMILIES):
            rs = [x for x in rows if x["family"] == f]
            ax.scatter(
                [x["measured_ms"] for x in rs],
                [x["predicted_ms"] for x in rs],
                s=14,
                c=f"C{i}",
                label=f,
            )
        hi = max(max(x["measured_ms"], x["predicted_ms"]) for x in rows) * 1.05
        ax.plot([0, hi], [0, hi], "k-", lw=0.8)
        ax.fill_between(
            [0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="k", alpha=0.08, label="+-10 %"
        )
        p = r["predictor"]
        ax.set(
            xlabel="measured latency (ms, ProxyTask.cost)",
            ylabel="predicted latency (ms)",
            title=f"{r['input_size']} px: {100 * p['within_10pct']:.0f} % within +-10 %, "
            f"median {p['median_abs_error_pct']:.1f} %",
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=50, help="random architectures per input size")
    p.add_argument("--sizes", default="256,512", help="input sizes, comma-separated")
    p.add_argument("--threads", type=int, default=ProxyConfig().latency_threads)
    p.add_argument("--out", type=Path, default=OUT / "latency_predictor.json")
    args = p.parse_args()
    start = time.perf_counter()
    results = []
    for size in args.sizes.split(","):  # written after each size: a long run keeps what it has
        results.append(study(int(size), args.size, args.threads))
        write_result(
            args.out,
            {
                "study": "latency predictor accuracy",
                "command": f"python experiments/latency_predictor_study.py --size {args.size} "
                f"--sizes {args.sizes} --threads {args.threads}",
                "target": "within +-10 % for >= 90 % of random architectures",
                "results": results,
                "wall_s": time.perf_counter() - start,
            },
            _plot(results),
        )
    print(f"\n{'size':>5} {'what':>28} {'within 10 %':>12} {'median err':>11} {'p90 err':>8}  load")
    for r in results:
        for what in ("predictor", "predictor_vs_mean_of_two", "measurement_repeatability"):
            e = r[what]
            print(
                f"{r['input_size']:>5} {what:>28} {100 * e['within_10pct']:>11.0f}% "
                f"{e['median_abs_error_pct']:>10.1f}% {e['p90_abs_error_pct']:>7.1f}%  "
                f"{r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f}"
            )
    print(f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
