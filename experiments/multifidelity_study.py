"""Plain TPE at the quick budget vs multi-fidelity TPE at equal wall-clock, on confirmed fronts
(issue 15, study 7).

For each seed, two `nas-neck search` processes run side by side on `--space`, one thread each,
for `--minutes` each (`--budget-minutes`; no baselines in either, so the whole budget searches):

* plain: every candidate trains the quick recipe (`--epochs 3`);
* multi-fidelity: `--rungs 1,3,9 --eta 3` (successive halving with Pareto-aware promotion).

Running the pair side by side gives both the same machine: on 2 cores each gets one, and load
from anything else falls on both alike. Each search then confirms the top `--confirm` of its
final front with the same budget (`--confirm-epochs`, `--confirm-seeds` training seeds 0..S-1,
from scratch), and FPN, PAFPN, BiFPN and NAS-FPN are confirmed the same way once (their own
study). Reported: each confirmed front's hypervolume against one reference point shared by
every study (1.1 x the largest latency of any confirmed point, mAP 0), the ratio of the mean
hypervolumes, and which baselines each confirmed front dominates (a point at least as fast
with a mean mAP at least as high, better on one).

Studies live in SQLite files under `--out`; a finished seed is skipped when rerun, and a seed
interrupted mid-search is run again from scratch (a resumed search would get a second budget).
`--part baselines` and `--part searches` run the two halves in separate processes (at once);
a final run with `--part all` then only summarises.

    python experiments/multifidelity_study.py [--minutes 10] [--seeds 3] [--confirm 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from nas_neck.search.confirm import confirmed

BASELINES = ["fpn", "pafpn", "bifpn", "nasfpn"]
METHODS = {
    "plain": ["--epochs", "3"],
    "mf": ["--rungs", "1,3,9", "--eta", "3"],
}
LABELS = {"plain": "plain TPE (3 epochs each)", "mf": "multi-fidelity TPE (rungs 1,3,9)"}


def _rows(name: str, storage: str) -> list[dict]:
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    return [
        {
            "trial": r.trial,
            "baseline": r.baseline,
            "latency_ms": r.cost,
            "latency_ratio": attrs[r.trial].get("latency_ratio"),
            "reference_ms": attrs[r.trial].get("latency_reference_ms"),
            "map": r.mean,
            "sd": r.sd,
            "seeds": r.seeds,
            "summary": r.summary,
        }
        for r in confirmed(study)
    ]


def _on_reference(rows: list[dict], reference_ms: float) -> list[dict]:
    """`rows` with their latency as ratio x `reference_ms`: studies calibrated their reference
    `fpn` at different times (and loads), and ms are comparable only on one reference."""
    return [r | {"latency_ms": r["latency_ratio"] * reference_ms} for r in rows]


def _counts(name: str, storage: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "candidates": sum(
            "promotes" not in t.user_attrs and t.user_attrs.get("role") != "confirm" for t in done
        ),
        "promotions": sum("promotes" in t.user_attrs for t in done),
        "confirm_runs": sum(t.user_attrs.get("role") == "confirm" for t in done),
        "failed": sum(t.state.name == "FAIL" for t in trials),
    }


def _run_pair(args: argparse.Namespace, seed: int, folder: Path) -> dict:
    """Both searches of one seed, side by side, then their confirmations."""
    common = [
        "--space", args.space, "--baselines", "", "--budget-minutes", str(args.minutes),
        "--confirm", str(args.confirm), "--confirm-epochs", str(args.confirm_epochs),
        "--confirm-seeds", str(args.confirm_seeds),
    ]  # fmt: skip
    out = searches_side_by_side(folder, seed, METHODS, common, args.threads)
    for method in METHODS:
        name = f"{method}-s{seed}"
        storage, _ = sqlite_urls(folder, name)
        out[method] = {"confirmed": _rows(name, storage), **_counts(name, storage)}
    return out


def _baselines(args: argparse.Namespace, folder: Path) -> list[dict]:
    """FPN, PAFPN, BiFPN and NAS-FPN: trained once at the quick budget, then confirmed alone."""
    storage, tracking = sqlite_urls(folder, "baselines")
    common = ["--storage", storage]
    search = nas_neck(
        "search",
        "--space", args.space,
        "--study", "baselines",
        *common,
        "--tracking-uri", tracking,
        "--trials", str(len(BASELINES)),
        "--baselines", ",".join(BASELINES),
        "--epochs", "3",
        "--out", str(folder / "runs"),
        threads=2 * args.threads,
        log=folder / "baselines.log",
    )  # fmt: skip
    if search.wait():
        raise SystemExit(f"the baselines' search failed; see {folder / 'baselines.log'}")
    conf = nas_neck(
        "confirm",
        "--study", "baselines",
        *common,
        "--top", "0",
        "--epochs", str(args.confirm_epochs),
        "--seeds", str(args.confirm_seeds),
        threads=2 * args.threads,
        log=folder / "baselines-confirm.log",
    )  # fmt: skip
    if conf.wait():
        raise SystemExit(
            f"the baselines' confirmation failed; see {folder / 'baselines-confirm.log'}"
        )
    return _rows("baselines", storage)


def _points(rows: list[dict]) -> np.ndarray:
    return np.array([(r["latency_ms"], r["map"]) for r in rows], dtype=float).reshape(-1, 2)


def _dominates(rows: list[dict], base: dict) -> bool:
    p = _points(rows)
    lat, m = base["latency_ms"], base["map"]
    return bool(np.any((p[:, 0] <= lat) & (p[:, 1] >= m) & ((p[:, 0] < lat) | (p[:, 1] > m))))


def _summary(seeds: dict[str, dict], baselines: list[dict]) -> dict:
    every = [_points(baselines)] + [
        _points(s[m]["confirmed"]) for s in seeds.values() for m in METHODS
    ]
    ref = (1.1 * float(np.concatenate(every)[:, 0].max()), 0.0)
    per = {m: [] for m in METHODS}
    dominated = {m: {b["baseline"]: 0 for b in baselines} for m in METHODS}
    for s in seeds.values():
        for m in METHODS:
            rows = s[m]["confirmed"]
            s[m]["hypervolume"] = hypervolume(_points(rows), ref)
            s[m]["dominates"] = [b["baseline"] for b in baselines if _dominates(rows, b)]
            per[m].append(s[m]["hypervolume"])
            for b in s[m]["dominates"]:
                dominated[m][b] += 1
    mean = {m: statistics.mean(v) for m, v in per.items()}
    return {
        "ref": ref,
        "hypervolume": per,
        "mean_hypervolume": mean,
        "ratio_mf_over_plain": mean["mf"] / mean["plain"] if mean["plain"] else None,
        "baselines_dominated_in_seeds": dominated,
        "baselines_hypervolume": hypervolume(_points(baselines), ref),
    }


def _plot(seeds: dict[str, dict], baselines: list[dict], summary: dict) -> plt.Figure:
    n = len(seeds)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.6 * (n + 1), 4.4))
    colors = {"plain": "#ff7f0e", "mf": "#1f77b4"}
    for ax, (seed, s) in zip(axes, seeds.items(), strict=False):
        for m in METHODS:
            p = _points(s[m]["confirmed"])
            sd = np.array([r["sd"] for r in s[m]["confirmed"]])
            ax.errorbar(*p.T, yerr=sd, fmt="o", color=colors[m], ms=4, capsize=3, label=LABELS[m])
            f = p[front(p)]
            ax.step(*f.T, where="post", color=colors[m], lw=1.4)
        b = _points(baselines)
        ax.errorbar(
            *b.T,
            yerr=[r["sd"] for r in baselines],
            fmt="s",
            color="black",
            ms=5,
            capsize=3,
            label="baselines",
        )
        for r in baselines:
            ax.annotate(
                r["baseline"],
                (r["latency_ms"], r["map"]),
                xytext=(5, -10),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_title(f"seed {seed}: confirmed fronts", fontsize=9)
        ax.set_xlabel("neck latency (ms)")
        ax.set_ylabel("mAP (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    bx = axes[-1]
    for k, m in enumerate(METHODS):
        hv = summary["hypervolume"][m]
        bx.bar(k, statistics.mean(hv), color=colors[m], alpha=0.7)
        bx.scatter([k] * len(hv), hv, color="black", s=12, zorder=3)
    bx.axhline(summary["baselines_hypervolume"], color="black", ls="--", lw=1, label="baselines")
    bx.set_xticks(range(len(METHODS)), [LABELS[m].split(" (")[0] for m in METHODS], fontsize=8)
    bx.set_title(f"hypervolume (mf / plain = {summary['ratio_mf_over_plain']:.2f})", fontsize=9)
    bx.legend(fontsize=7)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0, help="search budget of each search")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--space", default="pafpn-family")
    ap.add_argument("--confirm", type=int, default=3, help="top K of each front confirmed")
    ap.add_argument("--confirm-epochs", type=int, default=6)
    ap.add_argument("--confirm-seeds", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=1, help="training threads per search (two run side by side)"
    )
    ap.add_argument("--out", type=Path, default=OUT / "multifidelity")
    ap.add_argument(
        "--part",
        choices=("all", "baselines", "searches"),
        default="all",
        help="run only the baselines' confirmation or only the searches (two processes at once)",
    )
    args = ap.parse_args()
    folder = args.out
    folder.mkdir(parents=True, exist_ok=True)
    state_file, base_file = folder / "state.json", folder / "baselines.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("settings", {}) not in ({}, _settings(args)):
        raise SystemExit(f"{state_file} holds another configuration; use another --out")
    state["settings"] = _settings(args)
    if args.part in ("all", "baselines") and not base_file.exists():
        print("baselines: train and confirm FPN, PAFPN, BiFPN, NAS-FPN ...", flush=True)
        base_file.write_text(json.dumps(_baselines(args, folder), indent=2))
    seeds = run_seeds(
        state, state_file, args.seeds if args.part in ("all", "searches") else 0, list(METHODS),
        lambda seed: _run_pair(args, seed, folder), args.minutes,
    )  # fmt: skip
    if not seeds or not base_file.exists():
        print("not summarised yet: rerun with --part all once the searches and baselines are done")
        return
    # Re-read every confirmed front from its study (the state may predate a field), and put the
    # baselines on the searches' reference (one cache, so one calibration; checked).
    for seed, s in seeds.items():
        for m in METHODS:
            s[m]["confirmed"] = _rows(f"{m}-s{seed}", sqlite_urls(folder, f"{m}-s{seed}")[0])
    refs = {r["reference_ms"] for s in seeds.values() for m in METHODS for r in s[m]["confirmed"]}
    if len(refs) != 1:
        raise SystemExit(f"the searches measured latency against {len(refs)} references: {refs}")
    (reference_ms,) = refs
    state["baselines"] = _on_reference(
        _rows("baselines", sqlite_urls(folder, "baselines")[0]), reference_ms
    )
    summary = _summary(seeds, state["baselines"]) | {"reference_ms": reference_ms}
    for seed, s in seeds.items():
        for m in METHODS:
            r = s[m]
            print(
                f"seed {seed} {m:5s}: {r['candidates']} candidates, {r['promotions']} promotions, "
                f"HV {r['hypervolume']:.4f}, dominates {', '.join(r['dominates']) or 'none'}"
            )
    print(
        f"mean HV plain {summary['mean_hypervolume']['plain']:.4f}, "
        f"mf {summary['mean_hypervolume']['mf']:.4f}, ratio {summary['ratio_mf_over_plain']:.3f} "
        "(target >= 1.15)"
    )
    write_result(
        OUT / "multifidelity_study.json",
        {
            "settings": state["settings"],
            "baselines": state["baselines"],
            "seeds": seeds,
            "summary": summary,
        },
        _plot(seeds, state["baselines"], summary),
    )


def _settings(args: argparse.Namespace) -> dict:
    return {
        "minutes": args.minutes,
        "space": args.space,
        "confirm": args.confirm,
        "confirm_epochs": args.confirm_epochs,
        "confirm_seeds": args.confirm_seeds,
        "threads": args.threads,
        "methods": METHODS,
    }


if __name__ == "__main__":
    main()
