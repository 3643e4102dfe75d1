"""Trials per hour of one search run three ways: local, Ray with 1 trial x 2 CPUs, Ray 2 x 1 CPU.

The same `--size`-trial search (pafpn-family, random sampler seed 0, no baselines, the default
quick proxy) runs locally (`run_search`, 2 threads), then through Ray Tune on a local Ray instance
with one 2-CPU trial at a time, then with two 1-CPU trials at once (`run_ray_search`). Each way
runs in its own process on a feature cache built beforehand; trials/hour counts from the first
trial's start to the last one's end. Figures in docs/cluster.md.

    python experiments/bench_cluster_scaling.py [--size 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
from _common import OUT, ROOT, write_result

MODES = {
    "local": "local, 1 x 2 threads",
    "ray1x2": "Ray, 1 trial x 2 CPUs",
    "ray2x1": "Ray, 2 trials x 1 CPU",
}


def _run_mode(mode: str, size: int, work: Path) -> dict:
    """One way of running the search (in a child process, so each starts clean)."""
    import torch

    from nas_neck.config import ProxyConfig
    from nas_neck.proxy import ProxyTask
    from nas_neck.search.ray_backend import run_ray_search
    from nas_neck.search.runner import run_search
    from nas_neck.search.settings import SearchSettings

    cfg = ProxyConfig(cache_root=work / "cache")
    settings = SearchSettings(space=ROOT / "search_spaces" / "pafpn-family.yaml", study=mode,
                              storage=f"sqlite:///{work}/nas.db", tracking_uri=f"sqlite:///{work}/mlflow.db",
                              trials=size, sampler="random", seed=0, baselines=[], out_dir=work / "runs")  # fmt: skip
    if mode == "prepare":
        ProxyTask(cfg).caches((3, 4, 5))
        return {}
    start = time.perf_counter()
    if mode == "local":
        torch.set_num_threads(2)
        study = run_search(settings, ProxyTask(cfg))
    else:
        study = run_ray_search(settings, cfg, cpus_per_trial=1 if mode == "ray2x1" else 2,
                               max_concurrent=2 if mode == "ray2x1" else 1)  # fmt: skip
    wall = time.perf_counter() - start
    ts = [t for t in study.trials if "train_s" in t.user_attrs]
    span = (
        max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)
    ).total_seconds()
    return {
        "mode": mode, "wall_s": wall, "trial_span_s": span, "trials": len(ts),
        "trials_per_hour": 3600 * len(ts) / span,
        "mean_train_s": sum(t.user_attrs["train_s"] for t in ts) / len(ts),
        "hashes": [t.user_attrs["arch_hash"] for t in ts],
        "latency_ms": [t.user_attrs["latency_ms"] for t in ts],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4, help="trials per search")
    p.add_argument("--out", type=Path, default=OUT / "cluster_scaling.json")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one way in this process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(_run_mode(args.mode, args.size, args.work)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ["prepare", *MODES]:
            cmd = [
                sys.executable,
                __file__,
                "--size",
                str(args.size),
                "--mode",
                mode,
                "--work",
                tmp,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            row = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
            if row:
                rows.append(row)
                print(f"{MODES[mode]:>24}: {row['trials_per_hour']:.0f} trials/hour "
                      f"(mean training {row['mean_train_s']:.1f} s)", flush=True)  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([MODES[r["mode"]] for r in rows], [r["trials_per_hour"] for r in rows])
    ax.set(xlabel="trials / hour", title=f"the same {args.size}-trial search")
    write_result(args.out, {"study": "cluster scaling", "command": f"python experiments/bench_cluster_scaling.py "
                            f"--size {args.size}", "runs": rows}, fig)  # fmt: skip


if __name__ == "__main__":
    main()
