"""Precision: does bf16 autocast make trials faster without changing the ranking? (trial speed)

Trains `--size` architectures (the proxy-fidelity set: the shipped classics plus seeded samples of
the searchable families) at the quick budget on the default synthetic data, once in fp32 and once
under bf16 autocast (`TrainConfig.precision`), and reports per architecture the training time
and mAP, the median trial-time ratio fp32 / bf16 (target >= 1.3x) and Kendall's tau and
Spearman's rho between the two mAP rankings (target tau >= 0.9). The two runs of an architecture
go back to back, in alternating order, so load drift and warm-up hit both alike. Every result is
written as soon as it exists, so an interrupted run trains only what is missing.

    python experiments/precision_study.py [--size 12] [--epochs E] [--input-size S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from _common import OUT, write_result
from proxy_fidelity import architectures
from scipy.stats import kendalltau, spearmanr

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.device import cpu_has_native_bf16, default_device, resolve_precision
from nas_neck.proxy import ProxyTask

PRECISIONS = ("fp32", "bf16")
TARGET_SPEEDUP = 1.3
TARGET_TAU = 0.9


def _stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Speed-up and rank agreement over the architectures with both precisions done."""
    fp32, bf16 = ([r["map"][p] for r in rows] for p in PRECISIONS)
    trial = [_trial_s(r, "fp32") / _trial_s(r, "bf16") for r in rows]
    train = [r["train_s"]["fp32"] / r["train_s"]["bf16"] for r in rows]
    return {
        "median_trial_time_ratio": statistics.median(trial),
        "median_train_time_ratio": statistics.median(train),
        "total_trial_time_ratio": sum(_trial_s(r, "fp32") for r in rows)
        / sum(_trial_s(r, "bf16") for r in rows),
        "kendall_tau": kendalltau(fp32, bf16).statistic,
        "spearman_rho": spearmanr(fp32, bf16).statistic,
        "mean_abs_map_diff": statistics.fmean(abs(a - b) for a, b in zip(fp32, bf16, strict=True)),
    }


def _trial_s(row: dict[str, Any], precision: str) -> float:
    """What the precision changes in a trial's time: training plus evaluation."""
    return row["train_s"][precision] + row["eval_s"][precision]


def _plot(rows: list[dict[str, Any]], stats: dict[str, float]) -> plt.Figure:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 5))
    x, y = ([r["map"][p] for r in rows] for p in PRECISIONS)
    ax.scatter(x, y)
    for r, xi, yi in zip(rows, x, y, strict=True):
        ax.annotate(r["name"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(x + y), max(x + y)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set(
        xlabel="mAP, fp32 training",
        ylabel="mAP, bf16 autocast training",
        title=f"Kendall tau {stats['kendall_tau']:.2f}, Spearman rho {stats['spearman_rho']:.2f}",
    )
    ax.grid(alpha=0.3)
    ratios = [_trial_s(r, "fp32") / _trial_s(r, "bf16") for r in rows]
    bx.barh([f"{r['name']} {r['hash'][:6]}" for r in rows], ratios)
    bx.axvline(1.0, color="grey", lw=0.8)
    bx.axvline(TARGET_SPEEDUP, color="red", lw=0.8, ls="--", label=f"target {TARGET_SPEEDUP}x")
    bx.set(
        xlabel="trial time fp32 / bf16 (train + eval)",
        title=f"median speed-up {stats['median_trial_time_ratio']:.2f}x",
    )
    bx.tick_params(axis="y", labelsize=7)
    bx.legend(fontsize=8, loc="lower right")
    return fig


def _load(path: Path, settings: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Results of an earlier run with the same settings, by architecture hash (resume)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        raise SystemExit(
            f"{path} holds results for {old.get('settings')}, not {settings}; "
            "pass --out to write elsewhere"
        )
    return {r["hash"]: r for r in old.get("architectures", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12, help="number of architectures")
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="training budget")
    p.add_argument("--input-size", type=int, default=ProxyConfig().input_size)
    p.add_argument("--out", type=Path, default=OUT / "precision_study.json")
    args = p.parse_args()
    settings = {"epochs": args.epochs, "input_size": args.input_size}

    done = _load(args.out, settings)
    proxies = {
        prec: ProxyTask(
            ProxyConfig(
                input_size=args.input_size, train=TrainConfig(epochs=args.epochs, precision=prec)
            )
        )
        for prec in PRECISIONS
    }
    device = default_device()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def save(final: bool) -> None:
        finished = [r for r in rows if all(q in r["map"] for q in PRECISIONS)]
        stats = _stats(finished) if final else {}
        earlier = [r for h, r in done.items() if h not in {x["hash"] for x in rows}]
        result = {
            "study": "precision: fp32 vs bf16 autocast training",
            "command": "python experiments/precision_study.py "
            f"--size {args.size} --epochs {args.epochs} --input-size {args.input_size}",
            "settings": settings,
            "device": str(device),
            "cpu_native_bf16": cpu_has_native_bf16(),
            "auto_resolves_to": resolve_precision("auto", device),
            "targets": {"median_trial_time_ratio": TARGET_SPEEDUP, "kendall_tau": TARGET_TAU},
            "stats": stats,
            "architectures": rows + earlier,
            "wall_s_this_run": time.perf_counter() - start,
        }
        write_result(args.out, result, _plot(finished, stats) if final else None)

    for i, arch in enumerate(architectures(args.size)):
        row = done.get(arch.hash) or {
            "name": arch.name,
            "hash": arch.hash,
            "map": {},
            "train_s": {},
            "eval_s": {},
            "precision_resolved": {},
        }
        row["summary"] = arch.short()
        for prec in PRECISIONS[:: 1 if i % 2 == 0 else -1]:
            if prec in row["map"]:
                continue
            outcome = proxies[prec].run(arch)
            row["map"][prec] = outcome.metrics["map"]
            row["train_s"][prec] = outcome.timings["train_s"]
            row["eval_s"][prec] = outcome.timings["eval_s"]
            row["precision_resolved"][prec] = outcome.precision
            done[arch.hash] = row
            save(final=False)
        rows.append(row)
        print(
            f"{arch.name:>16} {arch.hash}  "
            + "  ".join(
                f"{q} mAP {row['map'][q]:.4f} train {row['train_s'][q]:6.1f} s" for q in PRECISIONS
            )
            + f"  speed-up {_trial_s(row, 'fp32') / _trial_s(row, 'bf16'):.2f}x",
            flush=True,
        )
    save(final=True)
    s = json.loads(args.out.read_text())["stats"]
    print(
        f"median trial time fp32 / bf16: {s['median_trial_time_ratio']:.2f}x "
        f"(train only {s['median_train_time_ratio']:.2f}x, all trials "
        f"{s['total_trial_time_ratio']:.2f}x; target >= {TARGET_SPEEDUP}x)"
    )
    print(
        f"mAP fp32 vs bf16: Kendall tau {s['kendall_tau']:.3f} (target >= {TARGET_TAU}), "
        f"Spearman rho {s['spearman_rho']:.3f}, mean |diff| {s['mean_abs_map_diff']:.4f}"
    )
    if not cpu_has_native_bf16():
        print("note: this CPU has no native bf16 (emulated); precision auto would train in fp32")
    print(f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
