"""Search vs random vs the hand-designed necks at an equal trial budget (issue 9, study 5).

For each seed, runs the same search twice on `--space` (default pafpn-family), once with the
default sampler (multivariate TPE) and once with random sampling, `--size` trials each, both with
the same proxy; the classic necks FPN, PAFPN, BiFPN and NAS-FPN are trained once with that proxy.
Objectives as in `nas-neck search`: mAP up, batch-1 neck latency down. Reports each front's
hypervolume (one reference point shared by every study: 1.1 x the largest latency seen, mAP 0)
and which baselines each front dominates (a front point at least as fast and as accurate, better
on one). Studies live in SQLite under the output folder, so an interrupted run resumes.

The proxy is the quick recipe cut to `--epochs` (default 1) so 3 seeds x 2 samplers x 12 trials
fit in 45 minutes on 2 CPU cores; study 4 measures how well that budget ranks.

    python experiments/search_vs_random.py [--size 12] [--seeds 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
from _common import OUT, ROOT, write_result
from optuna.trial import TrialState

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.pareto import front, hypervolume, reference_point
from nas_neck.proxy import ProxyTask
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings

BASELINES = ["fpn", "pafpn", "bifpn", "nasfpn"]
SAMPLERS = {"tpe": "default (multivariate TPE)", "random": "random"}


def _points(study: optuna.Study) -> np.ndarray:
    """(latency_ms, mAP) of the complete, feasible, non-duplicate trials."""
    rows = [
        (t.user_attrs["latency_ms"], t.user_attrs["map"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "map" in t.user_attrs and "duplicate_of" not in t.user_attrs
    ]
    return np.asarray(rows, dtype=float).reshape(-1, 2)


def _dominated(points: np.ndarray, base: tuple[float, float]) -> bool:
    lat, m = base
    better_eq = (points[:, 0] <= lat) & (points[:, 1] >= m)
    strict = (points[:, 0] < lat) | (points[:, 1] > m)
    return bool(np.any(better_eq & strict))


def _plot(fronts: dict, baselines: dict, hv: dict) -> plt.Figure:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    colors = {"tpe": "#1f77b4", "random": "#ff7f0e"}
    for (sampler, seed), pts in fronts.items():
        f = pts[front(pts)]
        ax.step(
            f[:, 0],
            f[:, 1],
            where="post",
            color=colors[sampler],
            alpha=0.8,
            ls="-" if sampler == "tpe" else "--",
            label=f"{sampler} seed {seed}",
        )
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colors[sampler], alpha=0.3)
    for name, (lat, m) in baselines.items():
        ax.scatter([lat], [m], marker="*", s=140, color="k", zorder=5)
        ax.annotate(name, (lat, m), xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="neck latency, batch 1 (ms)", ylabel="mAP@[.5:.95]", title="fronts per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    seeds = sorted({s for _, s in fronts})
    width = 0.38
    for i, sampler in enumerate(SAMPLERS):
        bx.bar(
            np.arange(len(seeds)) + (i - 0.5) * width,
            [hv[sampler][s] for s in seeds],
            width,
            color=colors[sampler],
            label=sampler,
        )
    bx.set(
        xticks=range(len(seeds)),
        xticklabels=[f"seed {s}" for s in seeds],
        ylabel="hypervolume",
        title="hypervolume (shared reference)",
    )
    bx.legend()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=12, help="trials per search")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the proxy")
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "pafpn-family.yaml")
    p.add_argument("--out", type=Path, default=OUT / "search_vs_random.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = args.out.with_suffix("")  # studies, MLflow store and checkpoints: resumable
    work.mkdir(parents=True, exist_ok=True)
    proxy = ProxyTask(ProxyConfig(train=TrainConfig(epochs=args.epochs)))
    common = {
        "space": args.space,
        "storage": f"sqlite:///{work / 'nas.db'}",
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "out_dir": work / "runs",
    }
    start = time.perf_counter()
    base_study = run_search(
        SearchSettings(
            **common,
            study="baselines",
            trials=len(BASELINES),
            baselines=BASELINES,
            sampler="random",
        ),
        proxy,
    )
    baselines = {
        t.user_attrs["baseline"]: (t.user_attrs["latency_ms"], t.user_attrs["map"])
        for t in base_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "map" in t.user_attrs
    }
    print(
        "baselines: "
        + ", ".join(f"{k} {m:.3f} @ {lat:.2f} ms" for k, (lat, m) in baselines.items())
    )

    fronts: dict[tuple[str, int], np.ndarray] = {}
    for seed in range(args.seeds):
        for sampler in SAMPLERS:
            t0 = time.perf_counter()
            study = run_search(
                SearchSettings(
                    **common,
                    study=f"{sampler}-seed{seed}",
                    trials=args.size,
                    baselines=[],
                    sampler=sampler,
                    seed=seed,
                ),
                proxy,
            )
            fronts[(sampler, seed)] = _points(study)
            print(
                f"{sampler:>6} seed {seed}: {len(fronts[(sampler, seed)])} trials scored "
                f"in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )

    ref = reference_point(np.vstack([*fronts.values(), np.asarray(list(baselines.values()))]))
    hv = {
        s: {seed: hypervolume(fronts[(s, seed)], ref) for seed in range(args.seeds)}
        for s in SAMPLERS
    }
    dominated = {
        s: {
            seed: [b for b, xy in baselines.items() if _dominated(fronts[(s, seed)], xy)]
            for seed in range(args.seeds)
        }
        for s in SAMPLERS
    }
    union = {s: np.vstack([fronts[(s, seed)] for seed in range(args.seeds)]) for s in SAMPLERS}
    summary = {
        s: {
            "hypervolume_mean": statistics.mean(hv[s].values()),
            "hypervolume_std": statistics.stdev(hv[s].values()) if args.seeds > 1 else 0.0,
            "dominates_in_every_seed": [
                b for b in baselines if all(b in d for d in dominated[s].values())
            ],
            "dominates_in_any_seed": [
                b for b in baselines if any(b in d for d in dominated[s].values())
            ],
            "best_map": float(union[s][:, 1].max()),
        }
        for s in SAMPLERS
    }
    for s, v in summary.items():
        print(
            f"{SAMPLERS[s]:>26}: hypervolume {v['hypervolume_mean']:.4f} ± {v['hypervolume_std']:.4f}; "
            f"dominates in every seed: {', '.join(v['dominates_in_every_seed']) or 'none'}; "
            f"in some seed: {', '.join(v['dominates_in_any_seed']) or 'none'}"
        )
    result = {
        "study": "search vs random vs baselines",
        "command": f"python experiments/search_vs_random.py --size {args.size} --seeds {args.seeds} "
        f"--epochs {args.epochs}",
        "space": str(args.space.relative_to(ROOT))
        if args.space.is_relative_to(ROOT)
        else str(args.space),
        "trials_per_search": args.size,
        "epochs": args.epochs,
        "reference_point": ref,
        "baselines": {k: {"latency_ms": lat, "map": m} for k, (lat, m) in baselines.items()},
        "hypervolume": {s: {str(k): v for k, v in hv[s].items()} for s in SAMPLERS},
        "dominated_baselines": {s: {str(k): v for k, v in dominated[s].items()} for s in SAMPLERS},
        "summary": summary,
        "target": "tpe mean hypervolume > random's; the tpe front dominates fpn and pafpn",
        "wall_s": time.perf_counter() - start,
    }
    write_result(args.out, result, _plot(fronts, baselines, hv))
    print(f"{result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
