"""Proxy fidelity: does the quick budget rank architectures like a 5x longer one? (issue 9, study 4)

Trains >= 12 architectures (the shipped classics plus seeded samples of the searchable families)
with the quick budget and with `--factor` x the epochs, on the same data, head and recipe, and
reports Kendall's tau and Spearman's rho between the two mAP rankings (target tau >= 0.6).

    python experiments/proxy_fidelity.py [--size N] [--factor 5] [--out experiments/out/proxy_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

from nas_neck.detect.trainer import TrainConfig
from nas_neck.dsl import load_architecture, load_space
from nas_neck.proxy import ProxyConfig, ProxyTask

ROOT = Path(__file__).parents[1]
SPACES = ROOT / "search_spaces"
CLASSICS = ["fpn", "pafpn", "bifpn", "nasfpn", "light"]
FAMILIES = ["pafpn-family", "bifpn-family", "nasfpn-free"]


def architectures(n: int) -> list:
    archs = [load_architecture(SPACES / f"{c}.yaml") for c in CLASSICS]
    seed = 0
    while len(archs) < n:
        space = load_space(SPACES / f"{FAMILIES[seed % len(FAMILIES)]}.yaml")
        arch = space.random(1000 + seed)
        if arch.hash not in {a.hash for a in archs}:
            archs.append(arch)
        seed += 1
    return archs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12, help="number of architectures")
    p.add_argument("--factor", type=int, default=5, help="long budget = factor x quick epochs")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "out" / "proxy_fidelity.json")
    args = p.parse_args()

    quick = TrainConfig()
    budgets = {"quick": quick.epochs, "long": quick.epochs * args.factor}
    proxies = {k: ProxyTask(ProxyConfig(train=TrainConfig(epochs=e))) for k, e in budgets.items()}
    rows = []
    start = time.perf_counter()
    for arch in architectures(args.size):
        row = {"name": arch.name, "hash": arch.hash, "summary": arch.short()}
        for k, proxy in proxies.items():
            outcome = proxy.run(arch)
            row[f"map_{k}"] = outcome.metrics["map"]
            row[f"train_s_{k}"] = outcome.timings["train_s"]
        rows.append(row)
        print(
            f"{arch.name:>14} {arch.hash}  quick {row['map_quick']:.4f}  long {row['map_long']:.4f}",
            flush=True,
        )
    q = [r["map_quick"] for r in rows]
    lg = [r["map_long"] for r in rows]
    tau, rho = kendalltau(q, lg).statistic, spearmanr(q, lg).statistic
    result = {
        "study": "proxy fidelity",
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "budgets_epochs": budgets,
        "architectures": rows,
        "kendall_tau": tau,
        "spearman_rho": rho,
        "target_tau": 0.6,
        "wall_s": time.perf_counter() - start,
    }
    print(
        f"Kendall tau {tau:.3f}, Spearman rho {rho:.3f} over {len(rows)} architectures "
        f"(quick {budgets['quick']} vs long {budgets['long']} epochs; target tau >= 0.6); "
        f"{result['wall_s'] / 60:.1f} min"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
