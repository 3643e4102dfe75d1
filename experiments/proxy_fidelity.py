"""Proxy fidelity: does the quick budget rank architectures like a 5x longer one? (issue 9, study 4)

Trains `--size` architectures (the shipped classics plus seeded samples of the searchable
families) at each budget in `--epochs` on the same data, head and recipe, and reports Kendall's
tau and Spearman's rho between each budget's mAP ranking and the longest budget's (target for
the default quick budget: tau >= 0.6). Every (architecture, epochs) result is written as soon as
it exists, so an interrupted run, or a rerun with another budget added, trains only what is
missing.

    python experiments/proxy_fidelity.py [--size 12] [--epochs 3,15] [--out experiments/out/proxy_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
from _common import OUT, ROOT, write_result
from scipy.stats import kendalltau, spearmanr

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.dsl import Architecture, load_architecture, load_space
from nas_neck.proxy import ProxyTask

SPACES = ROOT / "search_spaces"
CLASSICS = ["fpn", "pafpn", "bifpn", "nasfpn", "light"]
FAMILIES = ["pafpn-family", "bifpn-family", "nasfpn-free"]


def architectures(n: int) -> list[Architecture]:
    """The classics, then seeded random samples cycling through the families, no duplicates."""
    archs = [load_architecture(SPACES / f"{c}.yaml") for c in CLASSICS][:n]
    seed = 0
    while len(archs) < n:
        space = load_space(SPACES / f"{FAMILIES[seed % len(FAMILIES)]}.yaml")
        arch = space.random(1000 + seed)
        if arch.hash not in {a.hash for a in archs}:
            archs.append(arch)
        seed += 1
    return archs


def _plot(rows: list[dict], budgets: list[int], stats: dict[str, dict]) -> plt.Figure:
    ref = budgets[-1]
    fig, axes = plt.subplots(1, len(budgets) - 1, figsize=(5.5 * (len(budgets) - 1), 5))
    for ax, e in zip(axes if len(budgets) > 2 else [axes], budgets[:-1], strict=True):
        x = [r["map"][str(e)] for r in rows]
        y = [r["map"][str(ref)] for r in rows]
        ax.scatter(x, y)
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(r["name"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        s = stats[str(e)]
        ax.set(
            xlabel=f"mAP after {e} epochs",
            ylabel=f"mAP after {ref} epochs",
            title=f"{e} vs {ref} epochs: tau {s['kendall_tau']:.2f}, rho {s['spearman_rho']:.2f}",
        )
        ax.grid(alpha=0.3)
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12, help="number of architectures")
    p.add_argument(
        "--epochs",
        default="3,15",
        help="budgets in epochs, comma-separated; the last is the reference",
    )
    p.add_argument("--out", type=Path, default=OUT / "proxy_fidelity.json")
    args = p.parse_args()
    budgets = sorted({int(e) for e in args.epochs.split(",")})
    if len(budgets) < 2:
        p.error("--epochs needs at least two budgets")

    done: dict[str, dict] = {}
    if args.out.exists():  # resume: keep every (architecture, epochs) result already measured
        for r in json.loads(args.out.read_text()).get("architectures", []):
            done[r["hash"]] = r
    proxies = {e: ProxyTask(ProxyConfig(train=TrainConfig(epochs=e))) for e in budgets}
    rows: list[dict] = []
    start = time.perf_counter()

    def save(final: bool) -> None:
        stats = {}
        if final:
            ref = [r["map"][str(budgets[-1])] for r in rows]
            for e in budgets[:-1]:
                m = [r["map"][str(e)] for r in rows]
                stats[str(e)] = {
                    "kendall_tau": kendalltau(m, ref).statistic,
                    "spearman_rho": spearmanr(m, ref).statistic,
                    "train_s_mean": sum(r["train_s"][str(e)] for r in rows) / len(rows),
                }
        result = {
            "study": "proxy fidelity",
            "command": f"python experiments/proxy_fidelity.py --size {args.size} --epochs {args.epochs}",
            "budgets_epochs": budgets,
            "default_quick_epochs": TrainConfig().epochs,
            "target_tau": 0.6,
            "rank_agreement_with_longest": stats,
            "architectures": rows
            + [r for h, r in done.items() if h not in {x["hash"] for x in rows}],
            "wall_s_this_run": time.perf_counter() - start,
        }
        write_result(args.out, result, _plot(rows, budgets, stats) if final else None)

    for arch in architectures(args.size):
        row = done.get(arch.hash) or {
            "name": arch.name,
            "hash": arch.hash,
            "map": {},
            "train_s": {},
        }
        row["summary"] = arch.short()
        for e in budgets:
            if str(e) in row["map"]:
                continue
            outcome = proxies[e].run(arch)
            row["map"][str(e)] = outcome.metrics["map"]
            row["train_s"][str(e)] = outcome.timings["train_s"]
            done[arch.hash] = row
            save(final=False)
        rows.append(row)
        print(
            f"{arch.name:>16} {arch.hash}  "
            + "  ".join(f"{e} ep {row['map'][str(e)]:.4f}" for e in budgets),
            flush=True,
        )
    save(final=True)
    for e, s in json.loads(args.out.read_text())["rank_agreement_with_longest"].items():
        print(
            f"{e} vs {budgets[-1]} epochs: Kendall tau {s['kendall_tau']:.3f}, "
            f"Spearman rho {s['spearman_rho']:.3f} ({s['train_s_mean']:.0f} s training per arch)"
        )
    print(f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
