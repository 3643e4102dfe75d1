"""Do separate processes agree on a latency? (target: CV <= 5 % across processes)

The search compares candidates by latency measured in different processes (workers, Ray
trials), so what matters is the spread between processes, not within one. Every latency here is
what the search records: `ProxyTask.cost` on a small real proxy task (synthetic plates, the frozen
backbone's channels, the fixed head), i.e. the candidate timed beside the reference neck in the
same rounds, the ratio of their p10s, times the reference's calibrated time (calibrated once, by
the first process, in this run's own cache folder, then read by every other).

* **processes**: `--size` fresh spawned processes, one after another, each measuring `--arch`;
  the CV of their `latency_ms` (equal to the CV of their ratios: one calibration), beside the CV
  of what each process timed without the reference (its raw p10) and of the previous method
  (the median of round medians of the neck timed alone).
* **workers**: two processes at once, as two workers of one search, each measuring the same
  `--archs` architectures (seeded samples of `--space`; the second worker in reverse order, so
  they time different architectures at the same moment); per architecture, how far the two
  disagree (|a - b| / mean) on `latency_ms` and on the raw p10.

Each process records the 1-minute load average it started under, so a noisy host shows up.

    python experiments/bench_latency_stability.py [--size 5] [--archs 8] [--threads 1] \
        [--input-size 256] [--target torch] [--scope neck] [--mode both]

Issue 9, study 2.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from _common import OUT, write_result

from nas_neck.config import ProxyConfig
from nas_neck.data.synth import generate_synthetic
from nas_neck.device import available_cpus
from nas_neck.dsl import Architecture, load_architecture, load_space
from nas_neck.measure import feature_inputs, measure_latency
from nas_neck.neck import GraphNeck
from nas_neck.proxy import ProxyTask

_FIELDS = ("latency_ms", "latency_ratio", "latency_p10_ms", "latency_p90_ms", "measure_s")


def _architectures(space: str, n: int) -> list[Architecture]:
    """`n` distinct seeded samples of `space`: what a search's workers would measure."""
    sampled = load_space(space)
    archs: list[Architecture] = []
    seed = 0
    while len(archs) < n:
        arch = sampled.random(seed)
        if arch.hash not in {a.hash for a in archs}:
            archs.append(arch)
        seed += 1
    return archs


def _previous_method_ms(proxy: ProxyTask, arch: Architecture) -> float:
    """The neck timed alone, median of round medians: how latency was measured before."""
    c = proxy.config
    channels = proxy.channels(arch.inputs)
    inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], c.input_size)
    neck = GraphNeck(arch, channels)
    lat = measure_latency(
        neck, inputs, threads=c.latency_threads, warmup=c.latency_warmup, runs=c.latency_runs
    )
    return lat.median_ms


def _one_process(config: dict[str, Any], arch: str) -> dict[str, Any]:
    """One fresh process measuring `arch` as a search's trial would (and the previous way)."""
    load = os.getloadavg()[0]
    proxy = ProxyTask(ProxyConfig(**config))
    architecture = load_architecture(arch)
    cost = proxy.cost(architecture)
    return {
        **{k: cost[k] for k in _FIELDS},
        "reference_ms": cost["latency_reference_ms"],
        "previous_median_ms": _previous_method_ms(proxy, architecture),
        "loadavg_1min": load,
    }


def _one_worker(config: dict[str, Any], space: str, n: int, reverse: bool) -> dict[str, Any]:
    """One worker measuring the same `n` architectures as the other, in its own order."""
    load = os.getloadavg()[0]
    proxy = ProxyTask(ProxyConfig(**config))
    archs = _architectures(space, n)
    results = {}
    for arch in reversed(archs) if reverse else archs:
        cost = proxy.cost(arch)
        results[arch.hash] = {k: cost[k] for k in _FIELDS}
    return {"loadavg_1min": load, "costs": results, "order": [a.hash for a in archs]}


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def _disagreement(a: float, b: float) -> float:
    return abs(a - b) / ((a + b) / 2)


def _processes(config: dict[str, Any], arch: str, size: int) -> dict[str, Any]:
    """`size` fresh processes one after another (so they do not compete for the cores)."""
    spawn = multiprocessing.get_context("spawn")
    results = []
    for i in range(size):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            r = pool.submit(_one_process, config, arch).result()
        results.append(r)
        print(
            f"process {i}: latency {r['latency_ms']:.3f} ms (ratio {r['latency_ratio']:.4f} x "
            f"{r['reference_ms']:.3f} ms), raw p10 {r['latency_p10_ms']:.3f}, p90 "
            f"{r['latency_p90_ms']:.3f}, previous median {r['previous_median_ms']:.3f} ms, "
            f"cost took {r['measure_s']:.2f} s, load {r['loadavg_1min']:.2f}"
        )
    summary = {
        "arch": arch,
        "processes": results,
        "cv_latency_ms": _cv([r["latency_ms"] for r in results]),
        "cv_ratio": _cv([r["latency_ratio"] for r in results]),
        "cv_raw_p10": _cv([r["latency_p10_ms"] for r in results]),
        "cv_previous_median": _cv([r["previous_median_ms"] for r in results]),
    }
    print(
        f"{size} processes: CV of latency_ms {100 * summary['cv_latency_ms']:.2f} % "
        f"(target <= 5 %), of the ratio {100 * summary['cv_ratio']:.2f} %; without the "
        f"reference: raw p10 {100 * summary['cv_raw_p10']:.2f} %, previous method (median) "
        f"{100 * summary['cv_previous_median']:.2f} %"
    )
    return summary


def _workers(config: dict[str, Any], space: str, n: int) -> dict[str, Any]:
    """Two processes at once measuring the same `n` architectures, as two workers of a search."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        futures = [pool.submit(_one_worker, config, space, n, reverse) for reverse in (False, True)]
        workers = [f.result() for f in futures]
    rows = []
    for h in workers[0]["order"]:
        a, b = (w["costs"][h] for w in workers)
        rows.append(
            {
                "arch_hash": h,
                "latency_ms": [a["latency_ms"], b["latency_ms"]],
                "raw_p10_ms": [a["latency_p10_ms"], b["latency_p10_ms"]],
                "disagreement": _disagreement(a["latency_ms"], b["latency_ms"]),
                "disagreement_raw_p10": _disagreement(a["latency_p10_ms"], b["latency_p10_ms"]),
            }
        )
        print(
            f"{h}: {a['latency_ms']:.3f} vs {b['latency_ms']:.3f} ms "
            f"({100 * rows[-1]['disagreement']:.2f} %; raw p10 "
            f"{100 * rows[-1]['disagreement_raw_p10']:.2f} %)"
        )
    summary = {
        "space": space,
        "architectures": rows,
        "loadavg_1min": [w["loadavg_1min"] for w in workers],
        "median_disagreement": statistics.median(r["disagreement"] for r in rows),
        "max_disagreement": max(r["disagreement"] for r in rows),
        "median_disagreement_raw_p10": statistics.median(r["disagreement_raw_p10"] for r in rows),
        "mean_measure_s": statistics.fmean(
            c["measure_s"] for w in workers for c in w["costs"].values()
        ),
    }
    print(
        f"2 workers, {n} architectures: |a - b| / mean median "
        f"{100 * summary['median_disagreement']:.2f} %, max "
        f"{100 * summary['max_disagreement']:.2f} % (raw p10: median "
        f"{100 * summary['median_disagreement_raw_p10']:.2f} %); cost took "
        f"{summary['mean_measure_s']:.2f} s on average; loads {summary['loadavg_1min']}"
    )
    return summary


def _plot(processes: dict[str, Any] | None, workers: dict[str, Any] | None) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if processes is not None:
        rs = processes["processes"]
        x = range(len(rs))
        axes[0].plot(x, [r["latency_ms"] for r in rs], "o-", label="latency_ms (vs reference)")
        axes[0].plot(x, [r["latency_p10_ms"] for r in rs], "s--", label="raw p10, no reference")
        axes[0].plot(x, [r["previous_median_ms"] for r in rs], "^:", label="previous: median")
        axes[0].set(
            xlabel="process",
            ylabel="ms",
            title=f"{processes['arch']}: CV {100 * processes['cv_latency_ms']:.1f} % "
            f"(previous {100 * processes['cv_previous_median']:.1f} %)",
        )
        axes[0].legend(fontsize=8)
    if workers is not None:
        rows = workers["architectures"]
        x = range(len(rows))
        axes[1].bar([i - 0.2 for i in x], [100 * r["disagreement"] for r in rows], 0.4)
        axes[1].bar([i + 0.2 for i in x], [100 * r["disagreement_raw_p10"] for r in rows], 0.4)
        axes[1].legend(["latency_ms (vs reference)", "raw p10, no reference"], fontsize=8)
        axes[1].set(
            xlabel="architecture",
            ylabel="|a - b| / mean, %",
            title=f"2 workers: median {100 * workers['median_disagreement']:.1f} %",
        )
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def _config(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A small real proxy task in `root`: its data, feature cache and latency calibration."""
    data = generate_synthetic(root / "data", n_train=4, n_val=2, size=args.input_size, seed=0)
    return {
        "data": data.root,
        "input_size": args.input_size,
        "views": (0,),
        "cache_root": root / "cache",
        "latency_threads": args.threads,
        "latency_runs": args.runs,
        "latency_warmup": args.warmup,
        "latency_target": args.target,
        "latency_scope": args.scope,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5, help="processes (mode processes)")
    parser.add_argument("--archs", type=int, default=8, help="architectures (mode workers)")
    parser.add_argument("--mode", choices=("processes", "workers", "both"), default="both")
    parser.add_argument("--arch", default="pafpn", help="architecture (mode processes)")
    parser.add_argument("--space", default="pafpn-family", help="space sampled (mode workers)")
    parser.add_argument("--threads", type=int, default=1, help="the search's default")
    parser.add_argument("--runs", type=int, default=ProxyConfig().latency_runs)
    parser.add_argument("--warmup", type=int, default=ProxyConfig().latency_warmup)
    parser.add_argument("--input-size", type=int, default=ProxyConfig().input_size)
    parser.add_argument("--target", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--scope", choices=("neck", "detector"), default="neck")
    parser.add_argument("--out", type=Path, default=OUT / "latency_stability.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="latency-stability-") as tmp:
        config = _config(args, Path(tmp))
        ProxyTask(ProxyConfig(**config)).caches(load_architecture(args.arch).inputs)
        processes = _processes(config, args.arch, args.size) if args.mode != "workers" else None
        workers = _workers(config, args.space, args.archs) if args.mode != "processes" else None
    summary = {
        "study": "latency stability",
        "command": f"python experiments/bench_latency_stability.py --mode {args.mode} "
        f"--size {args.size} --archs {args.archs} --threads {args.threads} "
        f"--input-size {args.input_size} --target {args.target} --scope {args.scope}",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
        "processes": processes,
        "workers": workers,
        "target_cv": 0.05,
        "cpus_available": available_cpus(),
    }
    write_result(args.out, summary, _plot(processes, workers))


if __name__ == "__main__":
    main()
