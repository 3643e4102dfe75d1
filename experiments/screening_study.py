"""A search with `--screen N` against the same search without it, at equal wall-clock, on
hypervolume (issue 16, study 11).

For each seed, two `nas-neck search` processes run side by side on `--space`, one training thread
each, for `--minutes` each (`--budget-minutes`; quick budget, no baselines):

* plain: TPE, every candidate it samples is trained;
* screened: TPE with `--screen N --screen-signal S`: of N proposals the one the screener picks
  (Pareto-aware: the largest predicted hypervolume gain over the study's trained candidates) is
  trained; the screening (zero-cost proxies, the latency prediction) is paid inside the budget.

The latency table is built once before the first seed (`nas-neck show ... --latency`, about two
minutes per machine and input size, cached): a per-machine cost, not a per-search one. Running
the pair side by side gives both the same machine and the same load. Reported: each search's
hypervolume over its trained candidates against one reference point shared by every study
(1.1 x the largest latency of any trained candidate, mAP 0), the ratio of the means, the
candidates each trained, and where the screened search's choices fell.

Studies live in SQLite files under `--out`; a finished seed is skipped when rerun, a seed
interrupted mid-search runs again from scratch (a resumed search would get a second budget).

    python experiments/screening_study.py [--minutes 10] [--seeds 3] [--screen 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
from _common import (
    OUT,
    nas_neck,
    run_seeds,
    searches_side_by_side,
    sqlite_urls,
    write_result,
)

from nas_neck.pareto import front, hypervolume

LABELS = {"plain": "plain TPE", "screened": "TPE + --screen"}
COLORS = {"plain": "#ff7f0e", "screened": "#1f77b4"}


def _methods(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "plain": [],
        "screened": ["--screen", str(args.screen), "--screen-signal", args.signal],
    }


def _trained(name: str, storage: str) -> list[dict]:
    """The search's trained, feasible candidates: latency, mAP, and its screening record."""
    study = optuna.load_study(study_name=name, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state.name != "COMPLETE" or "duplicate_of" in a or a.get("infeasible"):
            continue
        screened = a.get("screened") or {}
        out.append(
            {
                "trial": t.number,
                "hash": a.get("arch_hash"),
                "latency_ms": float(a["latency_ms"]),
                "map": float(a["map"]),
                "train_s": a.get("train_s"),
                "signal": screened.get("signal"),
                "gain": max(screened.get("hypervolume_gain") or [0.0]),
            }
        )
    return out


def _failed(name: str, storage: str) -> int:
    study = optuna.load_study(study_name=name, storage=storage)
    return sum(t.state.name == "FAIL" for t in study.get_trials(deepcopy=False))


def _run_pair(args: argparse.Namespace, seed: int, folder: Path) -> dict:
    common = ["--space", args.space, "--baselines", "", "--epochs", "3",
              "--budget-minutes", str(args.minutes)]  # fmt: skip
    out = searches_side_by_side(folder, seed, _methods(args), common, args.threads)
    for method in _methods(args):
        name = f"{method}-s{seed}"
        storage, _ = sqlite_urls(folder, name)
        rows = _trained(name, storage)
        out[method] = {"trained": rows, "candidates": len(rows), "failed": _failed(name, storage)}
    return out


def _points(rows: list[dict]) -> np.ndarray:
    return np.array([(r["latency_ms"], r["map"]) for r in rows], dtype=float).reshape(-1, 2)


def _summary(seeds: dict[str, dict], methods: list[str]) -> dict:
    every = np.concatenate([_points(s[m]["trained"]) for s in seeds.values() for m in methods])
    ref = (1.1 * float(every[:, 0].max()), 0.0)
    per: dict[str, list[float]] = {m: [] for m in methods}
    for s in seeds.values():
        for m in methods:
            s[m]["hypervolume"] = hypervolume(_points(s[m]["trained"]), ref)
            per[m].append(s[m]["hypervolume"])
    mean = {m: statistics.mean(v) for m, v in per.items()}
    sd = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in per.items()}
    return {
        "ref": ref,
        "hypervolume": per,
        "mean_hypervolume": mean,
        "sd_hypervolume": sd,
        "ratio_screened_over_plain": mean["screened"] / mean["plain"] if mean["plain"] else None,
        "mean_candidates": {
            m: statistics.mean(s[m]["candidates"] for s in seeds.values()) for m in methods
        },
    }


def _plot(seeds: dict[str, dict], summary: dict, methods: list[str]) -> plt.Figure:
    n = len(seeds)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.6 * (n + 1), 4.2))
    for ax, (seed, s) in zip(axes, seeds.items(), strict=False):
        for m in methods:
            p = _points(s[m]["trained"])
            ax.scatter(*p.T, color=COLORS[m], s=14, label=f"{LABELS[m]} ({len(p)})")
            f = p[front(p)]
            ax.step(*f.T, where="post", color=COLORS[m], lw=1.4)
        ax.set_title(f"seed {seed}: trained candidates and fronts", fontsize=9)
        ax.set_xlabel("neck latency (ms)")
        ax.set_ylabel("mAP (quick budget)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    bx = axes[-1]
    for k, m in enumerate(methods):
        hv = summary["hypervolume"][m]
        bx.bar(k, statistics.mean(hv), color=COLORS[m], alpha=0.7)
        bx.scatter([k] * len(hv), hv, color="black", s=12, zorder=3)
    bx.set_xticks(range(len(methods)), [LABELS[m] for m in methods], fontsize=8)
    ratio = summary["ratio_screened_over_plain"]
    bx.set_title(f"hypervolume (screened / plain = {ratio:.2f})", fontsize=9)
    return fig


def _settings(args: argparse.Namespace) -> dict:
    return {
        "minutes": args.minutes,
        "space": args.space,
        "screen": args.screen,
        "signal": args.signal,
        "threads": args.threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="search budget of each search")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--space", default="pafpn-family")
    ap.add_argument("--screen", type=int, default=8, help="proposals per trained candidate")
    ap.add_argument(
        "--signal",
        default="flops",
        help="--screen-signal (flops: the best in pafpn-family, study 10)",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="training threads per search (two run side by side)"
    )
    ap.add_argument("--out", type=Path, default=OUT / "screening")
    args = ap.parse_args()
    folder = args.out
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("settings", {}) not in ({}, _settings(args)):
        raise SystemExit(f"{state_file} holds another configuration; use another --out")
    state["settings"] = _settings(args)
    if "table_s" not in state:
        print("latency table: build (or reuse) it before the first search ...", flush=True)
        start = time.time()
        show = nas_neck(
            "show", args.space, "--sample", "1", "--latency", "--json", "--input-size", "256",
            threads=args.threads, log=folder / "table.log",
        )  # fmt: skip
        if show.wait():
            raise SystemExit(f"building the latency table failed; see {folder / 'table.log'}")
        state["table_s"] = time.time() - start
        state_file.write_text(json.dumps(state, indent=2))
    methods = list(_methods(args))
    seeds = run_seeds(
        state, state_file, args.seeds, methods, lambda seed: _run_pair(args, seed, folder),
        args.minutes,
    )  # fmt: skip
    summary = _summary(seeds, methods)
    for seed, s in seeds.items():
        for m in methods:
            print(
                f"seed {seed} {m:8s}: {s[m]['candidates']} trained, {s[m]['failed']} failed, "
                f"HV {s[m]['hypervolume']:.4f}"
            )
    mean = summary["mean_hypervolume"]
    print(
        f"mean HV plain {mean['plain']:.4f}, screened {mean['screened']:.4f}, "
        f"ratio {summary['ratio_screened_over_plain']:.3f}"
    )
    write_result(
        OUT / "screening_study.json",
        {"settings": state["settings"], "table_s": state["table_s"], "seeds": seeds,
         "summary": summary},
        _plot(seeds, summary, methods),
    )  # fmt: skip


if __name__ == "__main__":
    main()
